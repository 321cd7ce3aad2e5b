"""Running models with onnxruntime, and the numerical equivalence check.

Every exact rewrite is judged here: original and rewritten models run on the
same seeded inputs with all of onnxruntime's graph optimizations disabled
(`ORT_DISABLE_ALL`), so that ORT's own fusions can neither hide nor add a
difference, and every output is compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import InputShapeError, InputTypeError
from .indices import index_limits
from .large import Light, inference_session, light_session, lighten

if TYPE_CHECKING:  # annotations only: model imports shapes, which runs models with this module
    from .model import Model

# onnx's tensor element types that a seeded random input can be made for.
_NUMPY_DTYPE = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}
# Integers for an input that indexes no table we can see (a mask, a flag, or an index behind an op the
# walk does not follow): 0 and 1 are a valid mask and a valid index into any table of two or more rows.
# A larger range would break the hidden tables; a value that must be specific (a sample rate) needs --data.
FALLBACK_INTEGER_LIMIT = 2


def session(model: Model, optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            threads: int = 1) -> ort.InferenceSession:
    """A CPU session for `model`; unoptimized by default, single-threaded for repeatability."""
    return open_session(model, _cpu_options(optimization, threads), ["CPUExecutionProvider"])


def exposing_session(model: Model, tensors: list[str]) -> tuple[onnx.ModelProto, ort.InferenceSession]:
    """`model` with `tensors` added to its graph outputs, and a session of it like `session`'s, made
    without copying the weights: from the light form (`ir.large`), whose large tensors are references
    to the model's own and reach onnxruntime as arrays. The proto is for its structure and shapes only."""
    light = lighten(model.proto)
    present = {o.name for o in light.proto.graph.output}
    light.proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in dict.fromkeys(tensors) if t not in present)
    return light.proto, light_cpu_session(light)


def light_cpu_session(light: Light) -> ort.InferenceSession:
    """An unoptimized single-threaded CPU session of a light form (`ir.large`), as `session` makes for a model."""
    return light_session(light, _cpu_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL, 1), ["CPUExecutionProvider"])


def _cpu_options(optimization: ort.GraphOptimizationLevel, threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # fatal only: its errors reach the user as our one-line message
    return options


def open_session(model: Model, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    """An onnxruntime session for `model`, of any size (past 2 GiB: see `ir.large`)."""
    return inference_session(model.proto, options, providers, serialized=model.serialized if model.fits else None)


def seeded_inputs(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Shape-correct random inputs at `model.input_shapes`: standard normal for floats, and for integers
    values below `integer_limits` (inside every table the input indexes)."""
    rng = np.random.default_rng(seed)
    limits = integer_limits(model)
    return {vi.name: random_array(rng, input_numpy_type(vi), model.input_shapes[vi.name], limits.get(vi.name),
                                   vi.name)
            for vi in model.graph_inputs}


def representative_inputs(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """What to run a model on when no data is at hand: its probe inputs (one run of real data, see
    `Model.with_probe_inputs`) when it carries them, else seeded random inputs."""
    return model.probe_inputs or seeded_inputs(model, seed)


def cannot_run(model: Model, exc: BaseException, why: str) -> InputShapeError:
    """The one-line error for a model onnxruntime cannot run on its representative inputs: the values
    (not only the shapes) matter, and the inputs that decide are those its control flow reads."""
    deciding = control_inputs(model) or [vi.name for vi in model.graph_inputs]
    what = "its data" if model.probe_inputs else "seeded random inputs"
    text = str(exc).strip().splitlines()
    reason = text[0] if text else type(exc).__name__
    return InputShapeError(f"{why}, and onnxruntime fails on {what} ({reason[:300]}); the model depends on the "
                           "values of " + ", ".join(f"'{name}' {list(model.input_shapes[name])}" for name in deciding)
                           + ": give real inputs with --data")


def control_inputs(model: Model) -> list[str]:
    """The graph inputs that a top-level If or Loop decides on (its condition, its trip count)."""
    inputs = {vi.name for vi in model.graph_inputs}
    pending = [t for n in model.nodes if n.op_type in ("If", "Loop")
               for t in n.input[:2 if n.op_type == "Loop" else 1] if t]
    found, seen = set(), set()
    while pending:
        tensor = pending.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        if tensor in inputs:
            found.add(tensor)
        producer = model.producer(tensor)
        if producer is not None:
            pending.extend(t for t in producer.input if t)
    return sorted(found)


def integer_limits(model: Model) -> dict[str, int]:
    """Per integer input, the bound random values stay below: the rows of the smallest table it indexes,
    else FALLBACK_INTEGER_LIMIT."""
    limits = index_limits(model)
    return {vi.name: limits.get(vi.name, FALLBACK_INTEGER_LIMIT) for vi in model.graph_inputs
            if np.issubdtype(input_numpy_type(vi), np.integer)}


def input_numpy_type(vi: onnx.ValueInfoProto) -> type:
    """The numpy type of a graph input that seeded inputs can be made for."""
    elem = vi.type.tensor_type.elem_type
    dtype = _NUMPY_DTYPE.get(elem)
    if dtype is None:
        kind = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else str(elem)
        raise InputTypeError(f"no random input generator for element type {kind} of '{vi.name}'; "
                             "give real inputs with --data")
    return dtype


# The most one seeded array may take. A valid but absurd shape (a 1e9-pixel image) would otherwise end in
# an allocation failure, or the kernel's OOM killer, instead of a message saying which input is too big.
SEEDED_ARRAY_LIMIT = 1 << 30


def random_array(rng: np.random.Generator, dtype: type, shape: tuple[int, ...], limit: int | None,
                 name: str = "") -> np.ndarray:
    """Standard normal floats, booleans, or integers in [0, limit); refuses one over SEEDED_ARRAY_LIMIT bytes."""
    size = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize  # object: no int64 overflow
    if size > SEEDED_ARRAY_LIMIT:
        raise InputShapeError(f"seeded inputs for '{name}' {list(shape)} would take {size / (1 << 30):,.1f} GiB, "
                              f"over the {SEEDED_ARRAY_LIMIT >> 30} GiB onnx-tailor allows; give a smaller "
                              "--input-shape (or fewer --samples)")
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype is np.bool_:
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, limit or FALLBACK_INTEGER_LIMIT, shape).astype(dtype)


def run(model: Model, feeds: dict[str, np.ndarray],
        optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> dict[str, np.ndarray]:
    """Every graph output of `model` on `feeds`, unoptimized unless `optimization` says otherwise."""
    sess = session(model, optimization)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


@dataclass(frozen=True)
class Comparison:
    """How far two models' outputs are apart on the same inputs."""

    equal: bool
    max_abs_error: float
    max_rel_error: float  # max |a - b| / max |b|, per output, worst output
    worst_output: str
    detail: str

    def __bool__(self) -> bool:
        return self.equal


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    rtol: float = 1e-4, atol: float = 1e-6) -> Comparison:
    """Compare outputs elementwise: |a - b| <= rtol * (|b| + max|b|) + atol.

    The max|b| term is the tolerance's scale: an element that happens to sit
    near zero in a large-valued output is held to the output's scale, not to
    its own (which float rounding alone would break). `atol` is a float32
    rounding floor for outputs that are all near zero (a saturated sigmoid
    on random inputs is ~1e-8 everywhere, and its last bits are noise).
    """
    worst = ("", 0.0, 0.0)
    problems = []
    for name, ref in reference.items():
        if name not in candidate:
            problems.append(f"output '{name}' is missing")
            continue
        got = candidate[name]
        if got.shape != ref.shape:
            problems.append(f"output '{name}' has shape {got.shape}, expected {ref.shape}")
            continue
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        if not np.all(np.isfinite(got64) == np.isfinite(ref64)):
            problems.append(f"output '{name}' has non-finite values where the original has none")
            continue
        finite = np.isfinite(ref64)
        diff = np.abs(got64 - ref64)[finite]
        scale = float(np.max(np.abs(ref64[finite]), initial=0.0))
        max_abs = float(diff.max(initial=0.0))
        rel = max_abs / scale if scale > 0 else max_abs
        if rel > worst[2] or not worst[0]:
            worst = (name, max_abs, rel)
        if np.any(diff > rtol * (np.abs(ref64[finite]) + scale) + atol):
            problems.append(f"output '{name}' differs: max abs error {max_abs:.3g}, relative {rel:.3g} (tolerance {rtol:g})")
    return Comparison(not problems, worst[1], worst[2], worst[0], "; ".join(problems) or "equal")


# An exact rewrite still changes how a model rounds (a depthwise conv run as a dense one sums in another
# order), and a model that amplifies rounding (seeded random weights, MobileNetV2-224: a 1e-7 change at its
# first depthwise conv grows to 5e-3 of its logits) moves further than any fixed tolerance. onnxruntime's own
# graph optimizations change the rounding the same way, so how far they move the original is that model's
# rounding floor; a rewrite within this many times the floor is as exact as the model can tell.
ROUNDING_MARGIN = 4.0


def check_equivalence(original: Model, rewritten: Model, rtol: float = 1e-4, seed: int = 0,
                      atol: float = 1e-6) -> Comparison:
    """Run both models on the same inputs (the original's representative inputs) and compare: within
    `rtol`, or within ROUNDING_MARGIN times the original's own rounding floor where that is larger."""
    feeds = representative_inputs(original, seed)
    try:
        reference = run(original, feeds)
    except Exception as exc:  # onnxruntime's own error types: the original itself does not run on these
        raise cannot_run(original, exc, "checking a rewrite runs the model") from None
    candidate = run(rewritten, feeds)
    comparison = compare_outputs(reference, candidate, rtol, atol)
    if comparison:
        return comparison
    floor = ROUNDING_MARGIN * rounding_floor(original, feeds, reference)
    return compare_outputs(reference, candidate, floor, atol) if floor > rtol else comparison


def rounding_floor(model: Model, feeds: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """How far, relative to each output's scale, onnxruntime's full graph optimization moves `model`'s
    outputs (`reference`, unoptimized) on `feeds`."""
    optimized = run(model, feeds, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    return compare_outputs(reference, optimized).max_rel_error
