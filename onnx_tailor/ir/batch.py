"""Where a model's batch is, and running a model on more samples than one batch.

Datasets and calibration data hold samples along their first axis (`[N, ...]`
per input: the *samples* layout). Models put the batch where their exporter
did: an image at axis 0 ([N, 3, H, W]), a recurrent state at axis 1
([layers, N, hidden]), a time-major output at axis 1 ([T, N, C]); a scalar such
as a sample rate has none (one value per run); and many exported detectors
fix the batch (1x3xHxW). Everything that runs a model on samples goes through
`run_samples`, which feeds batches the model accepts and joins each output
along its own batch axis, so no caller assumes axis 0 or a free batch.

How the axes are found (`batch_layout`), from the declared shapes alone:
- the batch dimension's name is, among the symbolic names that are some
  input's first dynamic dimension, the one found in the most inputs (ties:
  the one on the earlier axis);
- an input has its batch where it carries that name; without it, at its
  first dynamic dimension (exports often leave dimensions unnamed:
  silero-vad's state is [2, ?, 128]), except that a leading dimension fixed at
  1 is the batch when no input shows the batch free (a detector's
  [1, 3, ?, ?]); a rank-0 input has none;
- an input with every dimension fixed: in a model whose batch is free
  elsewhere, none (it cannot grow with the batch); in a model that fixes
  every input, its first axis as long as the fixed batch, which is the
  leading dimension of the first input of rank > 0.
An output (or a captured intermediate tensor) has its batch on the axis that
onnx shape inference carries the inputs' batch dimension to (`output_axes`);
where inference loses it (a fixed batch, a Reshape to constants, control
flow), on the axis whose length is the number of samples fed, preferring
axes the model leaves dynamic. Where several axes have that length (a state
[2, N, 128] run on 2 samples), the first sample is run alone once more and
the axis that shrinks to 1 is the batch: one extra run, and only then. A
fixed batch cannot be varied; there the first such axis is taken.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import numpy as np

from ..errors import InputShapeError, TailorError
from .large import copy_for_shapes
from .runtime import SEEDED_ARRAY_LIMIT, control_inputs, input_numpy_type, integer_limits, random_array, session
from .shapes import infer_shapes

if TYPE_CHECKING:  # annotations only: model imports shapes, which imports runtime
    from .model import Model

# The name given to the inputs' batch dimension before inference, to find where it goes.
_BATCH_SYMBOL = "onnx_tailor_batch"


@dataclass(frozen=True)
class BatchLayout:
    """The batch axis of every model input (None: the input has none) and the batch size the model fixes."""

    inputs: dict[str, int | None]
    fixed: int | None  # None: the model takes any number of samples per run
    name: str | None = None  # the batch dimension's symbolic name, when the model names it

    def per_sample(self, name: str, shape: tuple) -> tuple:
        """An input's shape with its batch axis taken out: the shape of one sample."""
        axis = self.inputs[name]
        return tuple(shape) if axis is None else tuple(shape[:axis]) + tuple(shape[axis + 1:])

    def feeds(self, samples: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Samples-layout arrays ([n, ...]) as the model takes them: the batch moved to each input's
        axis; an input without one gets the first sample's value (the data holds one value per sample)."""
        return {name: np.asarray(array[0]) if self.inputs[name] is None else np.moveaxis(array, 0, self.inputs[name])
                for name, array in samples.items()}


def batch_layout(model: Model) -> BatchLayout:
    """Where each input of `model` has its batch (see the module docstring)."""
    declared = {vi.name: model.declared_shape(vi.name) for vi in model.graph_inputs}
    name = _batch_name(declared.values())
    # Some input with a dynamic leading dimension (or a named batch) shows that the batch is free.
    free = name is not None or any(shape and not _fixed(shape[0]) for shape in declared.values())
    axes: dict[str, int | None] = {}
    for input_name, shape in declared.items():
        if shape is None:  # the model does not say: the usual place
            axes[input_name] = 0
        elif name is not None and name in shape:
            axes[input_name] = shape.index(name)
        elif not free and shape and shape[0] == 1:  # a batch fixed at 1 before dynamic sizes: 1x3xHxW detectors
            axes[input_name] = 0
        else:
            axes[input_name] = next((a for a, d in enumerate(shape) if not _fixed(d)), None)
    if all(axis is None for axis in axes.values()):  # every input fixed: the batch is fixed too
        leading = next((shape[0] for shape in declared.values() if shape), None)
        if leading is None:
            return BatchLayout(axes, None)
        axes = {n: None if not s else next((a for a, d in enumerate(s) if d == leading), None)
                for n, s in declared.items()}
        return BatchLayout(axes, leading)
    fixed = {shape[axes[n]] for n, shape in declared.items() if shape and axes[n] is not None
             and _fixed(shape[axes[n]])}
    return BatchLayout(axes, min(fixed) if fixed else None, name)


def _fixed(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _batch_name(shapes) -> str | None:
    """The batch dimension's name: among the symbolic names that are some input's first dynamic
    dimension, the one most inputs carry (ties: the one seen on the earliest axis). A name that never
    comes first ([?, seq] with an unnamed batch) is a sequence or a size, not the batch."""
    shapes = [shape for shape in shapes if shape]
    leading = {next((d for d in shape if not _fixed(d)), None) for shape in shapes}
    counts: Counter[str] = Counter()
    first_axis: dict[str, int] = {}
    for shape in shapes:
        for axis, dim in enumerate(shape):
            if isinstance(dim, str) and dim in leading:
                counts[dim] += 1
                first_axis[dim] = min(first_axis.get(dim, axis), axis)
    if not counts:
        return None
    return max(counts, key=lambda d: (counts[d], -first_axis[d]))


def output_axes(model: Model, layout: BatchLayout, outputs: list[str]) -> dict[str, int | None]:
    """The axis of each of `outputs` that shape inference carries the inputs' batch to; None where it loses it."""
    proto = copy_for_shapes(model.proto)
    for vi in proto.graph.input:
        axis = layout.inputs.get(vi.name)
        if axis is not None and vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.shape.dim[axis].dim_param = _BATCH_SYMBOL  # also clears a fixed dim_value
    for vi in proto.graph.output:
        vi.type.tensor_type.ClearField("shape")
    del proto.graph.value_info[:]
    inferred = infer_shapes(proto)
    found = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_param for d in vi.type.tensor_type.shape.dim]
        found[vi.name] = dims.index(_BATCH_SYMBOL) if _BATCH_SYMBOL in dims else None
    return {name: found.get(name) for name in outputs}


def length_axes(value: np.ndarray, fed: int, declared: tuple | None) -> list[int]:
    """The axes of `value` as long as the samples fed, those the model leaves dynamic first."""
    candidates = [axis for axis, length in enumerate(value.shape) if length == fed]
    dynamic = [axis for axis in candidates
               if declared is None or axis >= len(declared) or not _fixed(declared[axis])]
    return dynamic + [axis for axis in candidates if axis not in dynamic]


def _found_axes(model: Model, layout: BatchLayout, results: dict[str, np.ndarray], fed: int,
                run_one: Callable[[], dict[str, np.ndarray]]) -> dict[str, int | None]:
    """Each output's batch axis: where inference carries it, else the one axis as long as the batch; where
    several are (a state [2, N, 128] fed 2 samples), the one that shrinks to 1 when one sample runs alone."""
    axes = output_axes(model, layout, list(results))
    candidates = {name: length_axes(results[name], fed, model.declared_shape(name))
                  for name, axis in axes.items() if axis is None}
    ambiguous = [name for name, found in candidates.items() if len(found) > 1]
    if ambiguous and fed > 1 and layout.fixed is None:
        alone = run_one()
        for name in ambiguous:
            shrunk = [axis for axis in candidates[name] if alone[name].shape[axis] == 1]
            candidates[name] = shrunk or candidates[name]
    return {name: axis if axis is not None else (candidates[name] or [None])[0] for name, axis in axes.items()}


def chunks(samples: Mapping[str, np.ndarray], size: int, pad: bool) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(rows, chunk): consecutive slices of at most `size` samples; with `pad`, of exactly `size`, a short
    last slice filled up with copies of its last sample (for a model that fixes its batch)."""
    count = len(next(iter(samples.values())))
    for start in range(0, count, size):
        chunk = {name: array[start:start + size] for name, array in samples.items()}
        rows = len(next(iter(chunk.values())))
        if pad and rows < size:
            for name, part in chunk.items():  # the batch a model fixes may be absurd (10**9): say so, not OOM
                padded = size * (part[:1].nbytes or part.itemsize)
                if padded > SEEDED_ARRAY_LIMIT:
                    raise InputShapeError(f"the model fixes its batch at {size:,} samples: padding '{name}' to "
                                          f"one batch would take {padded / (1 << 30):,.1f} GiB, over the "
                                          f"{SEEDED_ARRAY_LIMIT >> 30} GiB onnx-tailor allows; is the model's "
                                          "batch dimension right?")
            chunk = {name: np.concatenate([part, np.repeat(part[-1:], size - rows, axis=0)])
                     for name, part in chunk.items()}
        yield rows, chunk


Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def run_samples(model: Model, samples: Mapping[str, np.ndarray], batch_size: int | None = None,
                runner: Runner | None = None, what: str = "its inputs",
                layout: BatchLayout | None = None) -> tuple[dict[str, np.ndarray], dict[str, int | None]]:
    """Every graph output of `model` on `samples` (samples layout), and each output's batch axis.

    The samples run `batch_size` at a time (all at once when None), or exactly the model's fixed batch
    at a time, the last run padded and the padding dropped again. Outputs keep the model's layout, joined
    along their batch axis. An output without a batch axis comes back as one run gave it, and only
    when one run was enough. `runner` runs one batch of feeds (default: an unoptimized session);
    `what` names the data in errors; `layout` is the model's when given (a cut of a model takes its
    batch where the whole model had it there, whatever its declared shapes suggest: `ir.cut`).
    """
    layout = batch_layout(model) if layout is None else layout
    count = len(next(iter(samples.values())))
    size = layout.fixed or batch_size or count
    if runner is None:
        sess = session(model)
        names = [o.name for o in sess.get_outputs()]

        def runner(feeds):
            return dict(zip(names, sess.run(names, feeds)))

    parts: dict[str, list[np.ndarray]] = {}
    axes: dict[str, int | None] | None = None
    runs = 0
    for rows, chunk in chunks(samples, size, pad=layout.fixed is not None):
        try:
            results = runner(layout.feeds(chunk))
        except TailorError:
            raise
        except Exception as exc:  # onnxruntime's own error types: shape errors inside the graph, etc.
            deciding = control_inputs(model)
            hint = (f"; its control flow decides on {', '.join(repr(n) for n in deciding)}: "
                    "give real values for them (--data)" if deciding else "")
            raise TailorError(f"onnxruntime cannot run the model on {what}: {_first_line(exc)[:300]}{hint}") from None
        fed = len(next(iter(chunk.values())))
        if axes is None:
            first = {name: array[:1] for name, array in chunk.items()}
            axes = _found_axes(model, layout, results, fed, lambda: runner(layout.feeds(first)))
        for name, value in results.items():
            axis = axes[name]
            whole = axis is None or value.shape[axis] == rows  # no padding to drop: the run's own array, uncopied
            parts.setdefault(name, []).append(value if whole else np.take(value, range(rows), axis=axis))
        runs += 1
    assert axes is not None  # samples hold at least one sample
    joined = {}
    for name, values in parts.items():
        axis = axes[name]
        if axis is None and (runs > 1 or (layout.fixed is not None and count != layout.fixed)):
            shape = list(values[0].shape)
            raise TailorError(f"output '{name}' of shape {shape} has no axis of the {size} samples fed a run, so "
                              f"runs cannot be joined or padding dropped; the model's batch layout is not one "
                              f"onnx-tailor understands")
        joined[name] = values[0] if axis is None else np.concatenate(values, axis=axis)
    return joined, axes


def seeded_samples(model: Model, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` seeded samples per input, in samples layout at `model.input_shapes`: standard normal floats,
    integers inside the tables they index (`runtime.integer_limits`). An input without a batch axis
    gets one value, repeated for every sample."""
    rng = np.random.default_rng(seed)
    layout = batch_layout(model)
    limits = integer_limits(model)
    samples = {}
    for vi in model.graph_inputs:
        dtype = input_numpy_type(vi)
        one = layout.per_sample(vi.name, model.input_shapes[vi.name])
        if layout.inputs[vi.name] is None:
            value = random_array(rng, dtype, one, limits.get(vi.name), vi.name)
            samples[vi.name] = np.repeat(value[None], count, axis=0)
        else:
            samples[vi.name] = random_array(rng, dtype, (count, *one), limits.get(vi.name), vi.name)
    return samples


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
