"""Datasets: the samples a model is judged (and calibrated) on, and whether they fit the model.

A `Dataset` holds N samples: one array per model input, each with the samples
along its first axis, and optionally one integer class label per sample.
Where the model has its batch on another axis (a recurrent state
[layers, N, hidden]) the data still holds it first ([N, layers, hidden]); an
input without a batch axis (a sample rate) holds one value per sample, the
same for all. `ir.batch` moves each to where the model takes it. It
comes from one of three sources, picked by `load_data` (in `sources.py`):

- an `.npz` file: arrays keyed by model input name, plus an optional `labels`
  array (integers, shape [N]);
- a folder of images with a preprocessing spec (see `images.py`);
- the word `random`: seeded, shape-correct inputs (`ir.batch.seeded_samples`)
  and no labels, so only fidelity metrics
  against an original model make sense on it.

A `Dataset` checks itself when built (same N everywhere, at least one sample,
labels one per sample, no NaN or infinity); `validate` checks it against a
model (input names, per-sample shapes with dynamic dimensions matching
anything, element types) and casts floats to the model's float type. Every
problem is a `DataError` in one line that names the input and says what the
model expects.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import DataError, InputTypeError
from ..ir import BatchLayout, Model, batch_layout, seeded_samples
from ..ir.batch import chunks

DEFAULT_RANDOM_SAMPLES = 64

# ONNX element types (TensorProto.DataType in onnx.proto; the numbers are part of
# the format and never change) that onnx-tailor can feed, as numpy types.
_ELEMENT_TYPES = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
    9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}


def input_dtype(model: Model, name: str) -> np.dtype | None:
    """The numpy type of model input `name`, or None for types onnx-tailor cannot feed."""
    vi = next(vi for vi in model.graph_inputs if vi.name == name)
    found = _ELEMENT_TYPES.get(vi.type.tensor_type.elem_type)
    return None if found is None else np.dtype(found)


def describe_input(model: Model, name: str) -> str:
    """`input [batch,1,32,32] float32`: how error messages show a model input."""
    shape = model.declared_shape(name)
    dims = "?" if shape is None else ",".join("?" if d is None else str(d) for d in shape)
    dtype = input_dtype(model, name)
    return f"{name} [{dims}] {dtype.name if dtype is not None else 'unsupported type'}"


@dataclass(frozen=True, eq=False)
class Dataset:
    """N samples: `inputs` maps model input names to arrays [N, ...]; `labels` is [N] or None.

    Treat the arrays as read-only: `fingerprint` (the key under which an
    original model's outputs are cached) is computed once.
    """

    inputs: Mapping[str, np.ndarray]
    labels: np.ndarray | None = None
    description: str = "data"
    classes: tuple[str, ...] | None = None  # class names by label, when the source names them

    def __post_init__(self):
        where = self.description
        inputs = {name: np.asarray(array) for name, array in self.inputs.items()}
        if not inputs:
            raise DataError(f"{where}: holds no input arrays")
        sizes = {}
        for name, array in inputs.items():
            if array.ndim == 0:
                raise DataError(f"{where}: array '{name}' is a scalar; each array needs the samples along "
                                f"its first axis")
            sizes[name] = array.shape[0]
        if len(set(sizes.values())) > 1:
            shown = ", ".join(f"'{name}' {size}" for name, size in sizes.items())
            raise DataError(f"{where}: the input arrays hold different numbers of samples ({shown})")
        n = next(iter(sizes.values()))
        if n == 0:
            raise DataError(f"{where}: holds no samples")
        for name, array in inputs.items():
            _check_finite(where, name, array)
        labels = None if self.labels is None else _checked_labels(where, np.asarray(self.labels), n)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "labels", labels)
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    def __len__(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def __str__(self) -> str:
        if self.labels is None:
            labelled = "no labels"
        else:
            labelled = f"labels {int(self.labels.min())}-{int(self.labels.max())}"
            if self.classes:
                labelled += f" ({len(self.classes)} classes)"
        return f"{self.description} ({len(self)} samples, {labelled})"

    @cached_property
    def fingerprint(self) -> str:
        """A hash of every array's name, type, shape and bytes: equal data, equal fingerprint."""
        digest = hashlib.blake2b(digest_size=16)
        arrays = [(f"input {name}", array) for name, array in sorted(self.inputs.items())]
        if self.labels is not None:
            arrays.append(("labels", self.labels))
        for tag, array in arrays:
            digest.update(f"{tag}|{array.dtype.str}|{array.shape}|".encode())
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()

    def subset(self, indices: Sequence[int] | np.ndarray, description: str | None = None) -> "Dataset":
        """The samples at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return Dataset({name: array[indices] for name, array in self.inputs.items()},
                       None if self.labels is None else self.labels[indices],
                       description or self.description, self.classes)


def _check_finite(where: str, name: str, array: np.ndarray) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: input '{name}' has NaN or infinite values in {int(bad.sum())} of "
                        f"{array.shape[0]} samples (the first is sample {int(np.argmax(bad))})")


def _checked_labels(where: str, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {labels.shape}; give one class index per sample, shape [N]"
                        + (" (not one-hot rows)" if labels.ndim == 2 else ""))
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels are {labels.dtype}; give integer class indices")
    if len(labels) != n:
        raise DataError(f"{where}: {len(labels)} labels for {n} samples; give one label per sample")
    if labels.min() < 0:
        raise DataError(f"{where}: labels include {int(labels.min())}; class indices start at 0")
    if int(labels.max()) > np.iinfo(np.int64).max:  # uint64 past int64 would wrap to a negative class
        raise DataError(f"{where}: labels include {int(labels.max())}, more than any class index can be "
                        f"(at most {np.iinfo(np.int64).max})")
    return labels.astype(np.int64, copy=False)


# -- fitting data to a model --------------------------------------------------------------


def validate(dataset: Dataset, model: Model) -> Dataset:
    """Check `dataset` against `model`'s inputs and return it with arrays cast to the model's types.

    Per-sample shapes must match the model's declared shape, where a
    dimension the model leaves dynamic matches anything. Floating-point data
    is cast to the model's float type (float64 -> float32 silently, the usual
    numpy default); integers are cast between widths when every value fits.
    Integer data for a float input, or the reverse, is an error: it usually
    means the wrong array, or data that was never preprocessed.
    """
    where = dataset.description
    expected = [vi.name for vi in model.graph_inputs]
    missing = [name for name in expected if name not in dataset.inputs]
    extra = [name for name in dataset.inputs if name not in expected]
    if missing or extra:
        problems = []
        if missing:
            problems.append("no array for model input " + ", ".join(f"'{m}'" for m in missing))
        if extra:
            problems.append("array " + ", ".join(f"'{e}'" for e in extra) + " is no model input")
        raise DataError(f"{where}: " + " and ".join(problems) + "; the model's inputs are: "
                        + "; ".join(describe_input(model, name) for name in expected))
    cast = {}
    layout = batch_layout(model)
    for name in expected:
        array = dataset.inputs[name]
        _check_shape(where, model, layout, name, array)
        cast[name] = _cast(where, model, name, array)
    if all(cast[name] is dataset.inputs[name] for name in expected):
        return dataset
    return Dataset(cast, dataset.labels, dataset.description, dataset.classes)


def _check_shape(where: str, model: Model, layout: BatchLayout, name: str, array: np.ndarray) -> None:
    declared = model.declared_shape(name)
    if declared is None:  # the model does not say; onnxruntime will
        return
    fixed = [d if isinstance(d, int) and d > 0 else None for d in layout.per_sample(name, declared)]
    per_sample = array.shape[1:]
    fits = len(per_sample) == len(fixed) and all(f is None or f == d for f, d in zip(fixed, per_sample))
    if not fits:
        wanted = ",".join("?" if f is None else str(f) for f in fixed)
        axis = layout.inputs[name]
        where_batch = "it has no batch axis: one value per sample" if axis is None else \
            f"its batch axis is {axis}, given first in the data"
        raise DataError(f"{where}: input '{name}' has samples of shape [{','.join(map(str, per_sample))}], "
                        f"the model takes [{wanted}] per sample (? = any; {where_batch}); the model's input is "
                        f"{describe_input(model, name)}")
    if layout.inputs[name] is None and len(array) > 1 and not (array == array[:1]).all():
        raise DataError(f"{where}: input '{name}' has no batch axis (the model takes one value per run), and its "
                        f"samples differ; give every sample the same value")


def _cast(where: str, model: Model, name: str, array: np.ndarray) -> np.ndarray:
    wanted = input_dtype(model, name)
    if wanted is None:
        raise DataError(f"{where}: model input {describe_input(model, name)} has an element type "
                        f"onnx-tailor cannot feed")
    have = array.dtype
    if have == wanted:
        return array
    if np.issubdtype(have, np.floating) and np.issubdtype(wanted, np.floating):
        cast = array.astype(wanted)
        _check_finite(where, name, cast)  # float64 values beyond float32's range become inf
        return cast
    if np.issubdtype(have, np.integer) and np.issubdtype(wanted, np.integer):
        info = np.iinfo(wanted)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(wanted)
        raise DataError(f"{where}: input '{name}' has values from {array.min()} to {array.max()}, "
                        f"beyond what the model's {wanted.name} holds")
    raise DataError(f"{where}: input '{name}' is {have.name}, the model takes {wanted.name}; integer and "
                    f"floating-point data are not converted (is this the right array, and is it preprocessed?)")


def probed_on(model: Model, dataset: Dataset) -> Model:
    """`model` with its shapes probed on the first run's worth of `dataset` rather than on seeded random
    inputs, and its input shapes taken from it (`Model.with_probe_inputs`): for a model whose shapes
    depend on input values (an If on a sample rate, or on a length)."""
    data = validate(dataset, model)
    layout = batch_layout(model)
    _, first = next(chunks(data.inputs, layout.fixed or 1, pad=True))
    return model.with_probe_inputs(layout.feeds(first))


# -- sources ------------------------------------------------------------------------------


def load_npz(path: str | os.PathLike) -> Dataset:
    """Arrays keyed by model input name, and optional `labels`, from an `.npz` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        hint = " (a .npy holds one unnamed array; save arrays by input name with numpy.savez)" \
            if path.suffix == ".npy" else " (is it truncated?)"
        raise DataError(f"{path}: not an .npz archive{hint}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            _check_declared_size(path, archive)
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # corrupt members, object arrays
        raise DataError(f"{path}: cannot read: {_first_line(exc)}") from None
    labels = arrays.pop("labels", None)
    return Dataset(arrays, labels, str(path))


# The most an .npz's arrays may declare together. A few compressed kilobytes can declare terabytes;
# their headers are read first, so that the size is said instead of allocated.
NPZ_LIMIT = 8 << 30


def _check_declared_size(path: Path, archive) -> None:
    total = 0
    for member in archive.zip.namelist():
        with archive.zip.open(member) as stream:
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version < (2, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(stream)  # the header alone
        total += int(np.prod(shape, dtype=object)) * dtype.itemsize
    if total > NPZ_LIMIT:
        raise DataError(f"{path}: its arrays declare {total / (1 << 30):,.1f} GiB, over the {NPZ_LIMIT >> 30} GiB "
                        "onnx-tailor reads; use fewer samples")


def random_dataset(model: Model, samples: int = DEFAULT_RANDOM_SAMPLES, seed: int = 0) -> Dataset:
    """`samples` seeded inputs of the model's concrete input shapes (standard normal floats, integers
    inside the tables they index: `ir.batch.seeded_samples`), without labels."""
    if samples < 1:
        raise DataError(f"random data needs at least one sample, not {samples}")
    try:
        inputs = seeded_samples(model, samples, seed)  # asks for --input-shape when a dimension is dynamic
    except InputTypeError as exc:
        raise DataError(f"random data: {exc}") from None
    return Dataset(inputs, None, f"random (seed {seed})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
