"""Models past protobuf's 2 GiB limit: serializing a model with its largest weights held aside.

Protobuf cannot serialize a message of 2 GiB or more, so a model whose weights
are that big (they live in external data on disk) breaks everything that
serializes it: onnx's checker and shape inference, onnxruntime given bytes, a
hash of its bytes. Such a model is handled through its *light* form: the same
proto whose large initializers carry an external-data reference instead of
their bytes, and the held tensors beside it (`lighten`). Then

- onnxruntime gets the light bytes and the held tensors as external
  initializers (`SessionOptions.add_external_initializers`), which it uses in
  place of the references without reading any file;
- shape inference runs on the light proto (it never needs the values of
  tensors that large; `ir.shapes.infer_shapes`, `copy_for_shapes`);
- the content hash covers the light bytes and every held tensor's bytes;
- onnxruntime's clean-up at load sees the held tensors as graph inputs and
  never needs their values (`ir.cleanup.ort_basic_cleanup`);
- saving writes the held tensors to the weights file and the light proto,
  with its references pointing there, as the graph (`ir.io.save`);
- loading checks the model by its path (`ir.io.read_proto`).

A model that fits is serialized whole for its checks, sessions and hash; its
light form serves it only where a copy of its weights would be waste: shape
inference, and the runs that expose inner tensors (`runtime.exposing_session`). The weights
themselves stay in memory (one copy per model, and one more while onnxruntime
runs it), so a model past 2 GiB needs several times its size in memory.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import google.protobuf.message
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

# Protobuf refuses to serialize 2 GiB; the margin leaves room for the graph around the weights.
SERIALIZABLE = (1 << 31) - (1 << 26)
# The location a held tensor's reference names: no such file exists; the tensor travels beside.
HELD_LOCATION = "onnx-tailor-held-in-memory"
# Tensors this big are held aside; smaller ones (shapes, biases, small weights) stay inline,
# where shape inference's data propagation can read them.
HOLD_FROM_BYTES = 1 << 16


def fits(proto: onnx.ModelProto) -> bool:
    """Whether protobuf can serialize `proto` whole. Its own `ByteSize` cannot say: past 2 GiB it
    fails as serializing does, so the size is summed from the parts (weights from their shapes)."""
    graph = proto.graph
    size = weight_bytes(proto) + sum(n.ByteSize() for n in graph.node)
    return size + sum(f.ByteSize() for f in proto.functions) < SERIALIZABLE


def weight_bytes(proto: onnx.ModelProto) -> int:
    """The bytes of the model's initializers, counted without serializing a large one."""
    return sum(_stored_bytes(t) for t in proto.graph.initializer)


def _stored_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type == onnx.TensorProto.STRING:
        return tensor.ByteSize()
    nbytes = tensor_nbytes(tensor)
    return nbytes if tensor.HasField("raw_data") or nbytes < HOLD_FROM_BYTES else tensor.ByteSize()


@dataclass
class Light:
    """A model's light form: `proto` with every held tensor replaced by an external-data reference."""

    proto: onnx.ModelProto
    held: dict[str, onnx.TensorProto] = field(default_factory=dict)  # shared with the source proto, never copied


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """The bytes of a numeric tensor's values, from its type and shape (0 for a type numpy has no form of)."""
    itemsize = _ITEMSIZES.get(tensor.data_type)
    if itemsize is None:
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (KeyError, ValueError, TypeError):
            itemsize = 0
        _ITEMSIZES[tensor.data_type] = itemsize
    return math.prod(tensor.dims) * itemsize  # Python ints: no overflow, and no numpy call per tensor


_ITEMSIZES: dict[int, int] = {}  # data type -> bytes per element (0: none numpy knows); asked of every weight


def holdable(tensor: onnx.TensorProto, from_bytes: int = HOLD_FROM_BYTES) -> bool:
    """An in-memory numeric tensor of at least `from_bytes` (strings and external references stay as they are)."""
    return (tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.data_type != onnx.TensorProto.STRING
            and _stored_bytes(tensor) >= from_bytes)


def reference(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> onnx.TensorProto:
    """`tensor`'s header (name, type, dims) pointing at `length` bytes of `location` from `offset`."""
    ref = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                           data_location=onnx.TensorProto.EXTERNAL)
    if tensor.doc_string:
        ref.doc_string = tensor.doc_string
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = ref.external_data.add()
        entry.key, entry.value = key, value
    return ref


def lighten(proto: onnx.ModelProto, from_bytes: int = HOLD_FROM_BYTES, location: str = HELD_LOCATION) -> Light:
    """The light form of `proto`, without copying any held tensor; `proto` is not modified."""
    light = onnx.ModelProto()
    _copy_fields(proto, light, skip="graph")
    _copy_fields(proto.graph, light.graph, skip="initializer")
    held = {}
    for tensor in proto.graph.initializer:
        if holdable(tensor, from_bytes):
            held[tensor.name] = tensor
            light.graph.initializer.append(reference(tensor, location, 0, tensor_nbytes(tensor)))
        else:
            light.graph.initializer.add().CopyFrom(tensor)
    return Light(light, held)


def copy_for_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` to change and infer shapes on: its light form, at no copy of the weights
    (shapes never depend on the values of tensors that large)."""
    return lighten(proto).proto


def content_hash(proto: onnx.ModelProto) -> str:
    """sha256 of a model too big to serialize: its light bytes, then each held tensor's name and bytes."""
    light = lighten(proto)
    digest = hashlib.sha256(light.proto.SerializeToString(deterministic=True))
    for name in sorted(light.held):
        digest.update(name.encode())
        digest.update(tensor_bytes(light.held[name]))
    return digest.hexdigest()


def tensor_bytes(tensor: onnx.TensorProto) -> bytes:
    """A tensor's values as raw little-endian bytes, however the proto stores them."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()


def inference_session(proto: onnx.ModelProto, options: ort.SessionOptions, providers: list[str],
                      serialized: bytes | None = None, **kwargs) -> ort.InferenceSession:
    """An onnxruntime session for `proto` of any size (`serialized`: its bytes, when the caller has them)."""
    if serialized is not None or fits(proto):
        return ort.InferenceSession(serialized or proto.SerializeToString(), options, providers=providers, **kwargs)
    return light_session(lighten(proto), options, providers, **kwargs)


def light_session(light: Light, options: ort.SessionOptions, providers: list[str], **kwargs) -> ort.InferenceSession:
    """An onnxruntime session for a light form, its held tensors handed over as arrays: the weights are
    neither serialized nor copied into onnxruntime. `light.proto` is the caller's: a held tensor of a type
    numpy cannot hand onnxruntime (bfloat16, float8, int4) is copied back into it."""
    names, values = [], []
    for ref in light.proto.graph.initializer:
        tensor = light.held.get(ref.name)
        if tensor is None:
            continue
        try:
            values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(tensor))))
            names.append(ref.name)
        except RuntimeError:  # "only supported from non-string numpy arrays": ml_dtypes' types
            ref.CopyFrom(tensor)
    options.add_external_initializers(names, values)
    session = ort.InferenceSession(light.proto.SerializeToString(), options, providers=providers, **kwargs)
    session._onnx_tailor_held = values  # onnxruntime reads these arrays in place: keep them alive with it
    return session


def _copy_fields(source: google.protobuf.message.Message, target: google.protobuf.message.Message,
                 skip: str) -> None:
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        slot = getattr(target, descriptor.name)
        if isinstance(value, google.protobuf.message.Message):
            slot.CopyFrom(value)
        elif hasattr(value, "extend"):  # a repeated field (of messages or of scalars)
            slot.extend(value)
        else:
            setattr(target, descriptor.name, value)
