"""Tensor shapes: onnx's shape inference, and concrete shapes and element types for one set of input shapes.

onnx's shape inference (with data propagation) answers for most models; for
the tensors it leaves open (e.g. a Resize whose scales are computed at run
time), the model is run once with those tensors exposed as outputs, which is
exact by construction: on its probe inputs (real data, when the user gave
some) or on seeded ones. That run uses the model as declared, with its
dynamic dimensions, and a model that fails on it (an If whose branches need
a particular sample rate or length) is a one-line error asking for --data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from . import large
from .runtime import cannot_run, exposing_session, representative_inputs

if TYPE_CHECKING:
    from .model import Model


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    elem_type: int

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def bytes(self) -> int:
        return self.elements * itemsize(self.elem_type)


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference with data propagation (resolves Shape->Reshape chains).

    It runs on the light form (`ir.large`): onnx would serialize the whole model for it and parse it back,
    two copies of the weights at the peak of memory while loading one, and shapes never depend on the
    values of tensors that large."""
    light = large.lighten(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(light.proto, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: analysis falls back to running the model
        return proto
    if large.fits(proto):  # the inferred model, its held tensors put back where their references are
        for ref in inferred.graph.initializer:
            if ref.name in light.held:
                ref.CopyFrom(light.held[ref.name])
        return inferred
    # Past 2 GiB the shapes go into `proto` itself, not into a copy of gigabytes: every caller
    # hands over a proto it has just made.
    for field in ("value_info", "output"):
        del getattr(proto.graph, field)[:]
        getattr(proto.graph, field).extend(getattr(inferred.graph, field))
    return proto


def itemsize(elem_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:  # undefined or string types: count them as 4 bytes, like float
        return 4


def _collect(proto: onnx.ModelProto) -> dict[str, TensorInfo]:
    found = {}
    for vi in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if all(d >= 0 for d in dims):
            found[vi.name] = TensorInfo(tuple(dims), tt.elem_type)
    return found


def concrete_tensor_info(model: Model) -> dict[str, TensorInfo]:
    """Shape and type of every activation tensor of `model` at `model.input_shapes`."""
    proto = large.copy_for_shapes(model.proto)
    fixed = model.input_shapes
    for vi in proto.graph.input:
        if vi.name in fixed:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in fixed[vi.name]:
                shape.dim.add().dim_value = d
    del proto.graph.value_info[:]
    proto = infer_shapes(proto)
    info = _collect(proto)
    wanted = [o for n in proto.graph.node for o in n.output if o and o not in info]
    if wanted:
        # The probe runs the model as declared, dynamic dimensions and all: with the concrete shapes
        # written in, onnxruntime type-checks every branch of an If against them, and the branch
        # that a real input never takes may not fit (silero-vad's 8 kHz branch at 16 kHz lengths).
        outputs = _probe(model, wanted)
        for name in wanted:
            value = outputs.get(name)
            if value is not None:
                info[name] = TensorInfo(tuple(value.shape), onnx.helper.np_dtype_to_tensor_dtype(value.dtype))
    return info


def _probe(model: Model, wanted: list[str]) -> dict[str, np.ndarray]:
    """`wanted` tensors (and the outputs) of `model` on its representative inputs."""
    feeds = representative_inputs(model)
    try:
        _, sess = exposing_session(model, wanted)
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))
    except Exception as exc:  # onnxruntime's own error types
        raise cannot_run(model, exc, "some shapes of this model are known only by running it") from None
