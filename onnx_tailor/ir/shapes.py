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

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from . import large
from .runtime import cannot_run, representative_inputs, run

if TYPE_CHECKING:
    from .model import Model


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    elem_type: int

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def bytes(self) -> int:
        return self.elements * itemsize(self.elem_type)


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference with data propagation (resolves Shape->Reshape chains).

    Inference runs on the light form (`ir.large`): weights of `large.HOLD_FROM_BYTES` or more are held
    aside, since inference never needs their values: onnx would serialize the whole model for it and parse
    it back (two more copies of the weights at the peak of memory while loading one; three quarters of a
    rewritten region's inference in a preview); past 2 GiB there is no other way."""
    light = large.lighten(proto) if any(large.holdable(t) for t in proto.graph.initializer) else None
    try:
        inferred = onnx.shape_inference.infer_shapes(light.proto if light else proto, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # inference is best effort: analysis falls back to running the model
        return proto
    if light is None:
        return inferred
    # Past 2 GiB the shapes go into `proto` itself, not into a copy of gigabytes: every caller hands over a
    # proto it has just made. Below, into a copy, as onnx's own inference returns one.
    result = proto
    if large.fits(proto):
        result = onnx.ModelProto()
        result.CopyFrom(proto)
    for field in ("value_info", "output"):
        del getattr(result.graph, field)[:]
        getattr(result.graph, field).extend(getattr(inferred.graph, field))
    return result


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
    fixed = model.input_shapes
    if model.shapes_inferred and all(model.declared_shape(name) == shape for name, shape in fixed.items()):
        proto = model.proto  # inferred already, at these very input shapes: inferring again gives the same
    else:
        proto = large.copy_for_shapes(model.proto)
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
        probe = onnx.ModelProto()
        probe.CopyFrom(model.proto)
        known = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted if name not in known)
        outputs = _probe(model, probe)
        for name in wanted:
            value = outputs.get(name)
            if value is not None:
                info[name] = TensorInfo(tuple(value.shape), onnx.helper.np_dtype_to_tensor_dtype(value.dtype))
    return info


def _probe(model: Model, probe: onnx.ModelProto) -> dict[str, np.ndarray]:
    feeds = representative_inputs(model)
    try:
        return run(model.with_proto(probe), feeds)
    except Exception as exc:  # onnxruntime's own error types
        raise cannot_run(model, exc, "some shapes of this model are known only by running it") from None
