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


def session(model: Model, optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            threads: int = 1) -> ort.InferenceSession:
    """A CPU session for `model`; unoptimized by default, single-threaded for repeatability."""
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.serialized, options, providers=["CPUExecutionProvider"])


def seeded_inputs(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Shape-correct random inputs: standard normal for floats, small non-negative ints
    (valid as indices into any table) for integers."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph_inputs:
        elem = vi.type.tensor_type.elem_type
        dtype = _NUMPY_DTYPE.get(elem)
        if dtype is None:
            raise NotImplementedError(f"no random input generator for element type {elem} of '{vi.name}'")
        shape = model.input_shapes[vi.name]
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 8, shape).astype(dtype)
    return feeds


def run(model: Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every graph output of `model` on `feeds`, unoptimized."""
    sess = session(model)
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


def check_equivalence(original: Model, rewritten: Model, rtol: float = 1e-4, seed: int = 0,
                      atol: float = 1e-6) -> Comparison:
    """Run both models on the same seeded inputs (the original's input shapes) and compare."""
    feeds = seeded_inputs(original, seed)
    return compare_outputs(run(original, feeds), run(rewritten, feeds), rtol, atol)
