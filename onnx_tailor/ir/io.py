"""Reading models from disk and writing them back without ever losing one.

`read_proto` returns a model as exported: checked (it parses, onnx-tailor
reads its opset, onnx's checker accepts it) but not rewritten. The canonical
`Model` every pass expects is made from it above this layer, by
`passes.canonicalize.load`.

Writes are atomic: the model (and its external data, if any) goes to a
temporary file in the destination folder and is renamed into place, so a
crash or Ctrl-C leaves either the old file or the new one, never half of one.
The input model is never overwritten unless the caller explicitly allows it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import google.protobuf.message
import onnx

from ..errors import ModelLoadError, TailorError
from .model import Model

# Protobuf cannot serialize a message over 2 GiB; past this, weights go to a side file.
_EXTERNAL_DATA_THRESHOLD = 1 << 30
MIN_OPSET = 11


def opset_of(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def check_opset(proto: onnx.ModelProto, source: str) -> None:
    """Refuse an opset onnx-tailor cannot read, saying how to fix it."""
    opset = opset_of(proto)
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise ModelLoadError(
            f"{source}: opset {opset} is older than {MIN_OPSET}, the oldest onnx-tailor reads; "
            f"upgrade it first, e.g. with onnx.version_converter.convert_version(model, {MIN_OPSET})"
        )
    if opset > newest:
        raise ModelLoadError(f"{source}: opset {opset} is newer than this onnx ({onnx.__version__}) knows ({newest}); upgrade onnx")


def read_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse an ONNX file (and its external data), turning every failure into one line."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=True) if path.is_file() else _read_stream(path)
    except google.protobuf.message.DecodeError:
        raise ModelLoadError(f"{path}: not an ONNX model (the file does not parse; is it truncated?)") from None
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: external data file missing: {exc.filename or exc}") from None
    except onnx.checker.ValidationError as exc:  # external data outside the model's folder, or not a file
        raise ModelLoadError(f"{path}: bad external data: {_first_line(exc)}") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from None
    if proto.ir_version == 0 or not proto.HasField("graph") or not proto.graph.node:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph in it; is it truncated?)")
    check_opset(proto, str(path))  # before the checker, whose complaint about an old opset is cryptic
    try:
        onnx.checker.check_model(proto)
        _read_names(proto.graph)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"{path}: invalid ONNX model: {first_line}") from None
    except UnicodeDecodeError:  # protobuf parses any bytes into a string field; the checker reads them as UTF-8
        raise ModelLoadError(f"{path}: invalid ONNX model: a name or string in it is not UTF-8 "
                             "(is the file corrupt?)") from None
    check_tensors(proto, str(path))
    check_attribute_lists(proto, str(path))
    return proto


def _read_names(graph: onnx.GraphProto) -> None:
    """Read every name once: protobuf hands a string that is not UTF-8 back as bytes (or raises) only when
    it is read, and the checker does not read them all, so it would fail deep inside a rewrite."""
    names = [info.name for info in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output]
        for attribute in node.attribute:
            names.append(attribute.name)
            if attribute.type == onnx.AttributeProto.GRAPH:
                _read_names(attribute.g)
    corrupt = next((name for name in names if not isinstance(name, str)), None)
    if corrupt is not None:
        raise UnicodeDecodeError("utf-8", bytes(corrupt), 0, len(corrupt), "a name that is not UTF-8")


_LIST_ATTRIBUTES = {onnx.AttributeProto.INTS: "ints", onnx.AttributeProto.FLOATS: "floats",
                    onnx.AttributeProto.STRINGS: "strings"}


def check_attribute_lists(proto: onnx.ModelProto, source: str) -> None:
    """Refuse a list attribute with no values: the checker accepts it, but onnx-graphsurgeon, which every
    rewrite goes through, cannot tell its type and fails to write the graph back."""
    for node in proto.graph.node:
        for attribute in node.attribute:
            field = _LIST_ATTRIBUTES.get(attribute.type)
            if field and not getattr(attribute, field):
                raise ModelLoadError(f"{source}: node '{node.name or node.op_type}': attribute '{attribute.name}' "
                                     "is an empty list; give its values or leave it out")


# Element types whose values sit one per element in raw_data (itemsize bytes each) or in a typed field.
_PLAIN_TYPES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2,
                onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
                onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT32: 4,
                onnx.TensorProto.UINT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.UINT64: 8,
                onnx.TensorProto.BOOL: 1}


def check_tensors(proto: onnx.ModelProto, source: str) -> None:
    """Refuse an element type onnx does not define, and an initializer whose data does not fill its dims:
    the checker lets both through, and they fail later deep inside a rewrite (or allocate what dims claim)."""
    for info in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        elem = info.type.tensor_type.elem_type
        if info.type.HasField("tensor_type") and elem not in onnx.TensorProto.DataType.values():
            raise ModelLoadError(f"{source}: invalid ONNX model: '{info.name}' has no known element type ({elem})")
    for tensor in proto.graph.initializer:
        if tensor.data_type not in onnx.TensorProto.DataType.values() or not tensor.data_type:  # 0: UNDEFINED
            raise ModelLoadError(f"{source}: invalid ONNX model: initializer '{tensor.name}' has no known element "
                                 f"type ({tensor.data_type})")
        itemsize = _PLAIN_TYPES.get(tensor.data_type)
        if itemsize is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        count = 1
        for dim in tensor.dims:
            count *= dim
        if tensor.HasField("raw_data"):
            held = len(tensor.raw_data) // itemsize if len(tensor.raw_data) % itemsize == 0 else -1
        else:
            held = len(getattr(tensor, onnx.helper.tensor_dtype_to_field(tensor.data_type)))
        if held != count or any(dim < 0 for dim in tensor.dims):
            raise ModelLoadError(f"{source}: invalid ONNX model: initializer '{tensor.name}' has dims "
                                 f"{list(tensor.dims)} but holds {max(held, 0)} values (is the file corrupt?)")


# A device or pipe has no size to check first (/dev/zero never ends): read at most this much of one.
STREAM_LIMIT = 1 << 30


def _read_stream(path: Path) -> onnx.ModelProto:
    """A model from something that is not a regular file (a pipe, a device), read up to STREAM_LIMIT."""
    with open(path, "rb") as stream:
        data = stream.read(STREAM_LIMIT + 1)
    if len(data) > STREAM_LIMIT:
        raise ModelLoadError(f"{path}: is not a regular file and holds more than {STREAM_LIMIT >> 20} MiB; "
                             "an ONNX model read from a pipe or device must be smaller (or save it to a file)")
    proto = onnx.load_model_from_string(data)
    onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    return proto


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a small text file (report, recipe, profile, CSV) via a sibling temporary and a rename."""
    path = Path(path)
    staged = path.with_name(path.name + ".part")
    staged.write_text(text)
    os.replace(staged, path)
    return path


def ensure_not_input(output: str | os.PathLike, input_path: str | os.PathLike | None, allow: bool) -> None:
    """Refuse to write over the model we read, unless the user asked for exactly that."""
    if input_path is None or allow:
        return
    out, src = Path(output), Path(input_path)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise TailorError(f"{output}: is the input model; choose another output or pass --overwrite-input")


def save(model: Model, path: str | os.PathLike, input_path: str | os.PathLike | None = None,
         overwrite_input: bool = False) -> Path:
    """Write `model` to `path` atomically; large weights go to `<name>.data` beside it."""
    path = Path(path)
    ensure_not_input(path, input_path, overwrite_input)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise TailorError(f"{path}: folder {folder} does not exist")
    external = sum(len(t.raw_data) for t in model.graph.initializer) > _EXTERNAL_DATA_THRESHOLD
    with tempfile.TemporaryDirectory(prefix=".onnx-tailor-", dir=folder) as tmp:
        staged = Path(tmp) / path.name
        if external:
            proto = onnx.ModelProto()
            proto.CopyFrom(model.proto)
            onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)
            os.replace(Path(tmp) / (path.name + ".data"), folder / (path.name + ".data"))
        else:
            staged.write_bytes(model.serialized)
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staged, path)
    return path
