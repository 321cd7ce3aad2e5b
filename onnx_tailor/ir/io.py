"""Reading models from disk and writing them back without ever losing one.

`read_proto` returns a model as exported: checked (it parses, onnx-tailor
reads its opset, onnx's checker accepts it) but not rewritten. The canonical
`Model` every pass expects is made from it above this layer, by
`passes.canonicalize.load`.

Writes are atomic and go through `Outputs`, a set of files committed
together: each file is written to a uniquely named temporary in its
destination folder and fsynced, and only when every one is written are they
renamed into place, so a crash, a full disk or Ctrl-C leaves either the old
files or the new ones, never half of one and never a partial set. The
temporaries are hidden files named `.onnx-tailor-<pid>-...`; one left by a
killed run is removed by the next write into the same folder.

A model's external data (weights past `_EXTERNAL_DATA_THRESHOLD`, and every
model past protobuf's 2 GiB limit, see `ir.large`) goes to a weights file
whose name no existing file has: `<model>.data`, or `<model>.<random>.data`
when that is taken (by the input model's own weights, say). The weights file
is renamed into place before the graph that reads it, so a crash between the
two leaves the old graph reading its old weights. After the commit, the
weights file the replaced graph read is removed when it was named for this
output (`<model>.data` or `<model>.<random>.data`) and the input model does
not read it.
The input model is never overwritten unless the caller explicitly allows it.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from pathlib import Path
from typing import Iterator

import google.protobuf.message
import onnx
from onnx.external_data_helper import uses_external_data

from ..errors import ModelLoadError, OutputError, TailorError
from . import large
from .model import Model
from .subgraphs import subgraphs
from .temporaries import remove_stale_temporaries, tagged_prefix

# Protobuf cannot serialize a message over 2 GiB; past this, weights go to a side file.
_EXTERNAL_DATA_THRESHOLD = 1 << 30
_EXTERNAL_FROM_BYTES = 1024  # in a weights file, tensors this big go there; smaller ones stay in the graph
_ALIGNMENT = 4096  # weights start on page boundaries, where onnxruntime can map them
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
    """Parse an ONNX file (and its external data), turning every failure into one line.

    The checker is given the proto as parsed, before its external data is read (a stream can be
    read only once anyway). A file the checker must parse itself: a model with external data, since
    the checker looks for the data files beside a path it is given but in the working directory for
    a proto (that file holds the graph alone, so parsing it again costs little); and a proto too big
    to serialize for the checker."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, not an ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False) if path.is_file() else _read_stream(path)
    except google.protobuf.message.DecodeError:
        raise ModelLoadError(f"{path}: not an ONNX model (the file does not parse; is it truncated?)") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from None
    if proto.ir_version == 0 or not proto.HasField("graph") or not proto.graph.node:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph in it; is it truncated?)")
    check_opset(proto, str(path))  # before the checker, whose complaint about an old opset is cryptic
    try:
        external = any(uses_external_data(t) for t in _tensors(proto.graph))
        onnx.checker.check_model(str(path) if path.is_file() and (external or not large.fits(proto)) else proto)
        _read_names(proto.graph)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"{path}: invalid ONNX model: {first_line}") from None
    except UnicodeDecodeError:  # protobuf parses any bytes into a string field; the checker reads them as UTF-8
        raise ModelLoadError(f"{path}: invalid ONNX model: a name or string in it is not UTF-8 "
                             "(is the file corrupt?)") from None
    check_tensors(proto, str(path))
    check_attribute_lists(proto, str(path))
    check_shapes(proto, str(path))
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: external data file missing: {exc.filename or exc}") from None
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{path}: cannot read its external data: {first_line}") from None
    return proto


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor `graph` holds: its initializers and its nodes' tensor attributes, nested bodies included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
        for _, body in subgraphs(node):
            yield from _tensors(body)


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


# Ops whose constant weight and bias the passes read as arrays (folds, channel edits).
_WEIGHTED = ("Conv", "ConvTranspose")
_INFERENCE_ERROR = re.compile(r"\(op_type:(?P<op>[^,]*), node name: (?P<node>.*?)\): (?:\[\w+\] )?(?P<why>.*)")


def check_shapes(proto: onnx.ModelProto, source: str) -> None:
    """Refuse a model whose shapes contradict each other (a Conv given another layer's weight, a
    BatchNormalization whose parameters do not match its channels): the checker does not look, and the
    folds at load would fail on them deep inside numpy. onnx's shape inference in strict mode finds most;
    it runs on the light form, with the shapes the file declares for inner tensors and outputs left out
    (a stale annotation is not an error: the shapes are inferred again). A Conv weight of the wrong rank,
    which inference lets through, is checked here."""
    light = large.lighten(proto).proto
    del light.graph.value_info[:]
    for output in light.graph.output:
        output.type.tensor_type.ClearField("shape")
    try:
        onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
    except onnx.shape_inference.InferenceError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        # "[ShapeInferenceError] Inference error(s): (op_type:X, node name: Y): [TypeInferenceError] why"
        said = _INFERENCE_ERROR.search(first)
        if said:
            first = f"node '{said['node']}' ({said['op']}): {said['why']}"
        raise ModelLoadError(f"{source}: invalid ONNX model: its shapes do not agree: {first}") from None
    dims = {t.name: list(t.dims) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type not in _WEIGHTED or len(node.input) < 2 or node.input[1] not in dims:
            continue
        weight = dims[node.input[1]]
        if len(weight) < 3:
            raise ModelLoadError(f"{source}: invalid ONNX model: {node.op_type} '{node.name}' has a weight of "
                                 f"shape {weight}; a {node.op_type} weight has at least 3 dims")
        bias = dims.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        channels = weight[0] if node.op_type == "Conv" else weight[1] * group
        if bias is not None and bias != [channels]:
            raise ModelLoadError(f"{source}: invalid ONNX model: {node.op_type} '{node.name}' has a bias of "
                                 f"shape {bias} for {channels} output channels")


# A device or pipe has no size to check first (/dev/zero never ends): read at most this much of one.
STREAM_LIMIT = 1 << 30


def _read_stream(path: Path) -> onnx.ModelProto:
    """A model from something that is not a regular file (a pipe, a device), read up to STREAM_LIMIT."""
    with open(path, "rb") as stream:
        data = stream.read(STREAM_LIMIT + 1)
    if len(data) > STREAM_LIMIT:
        raise ModelLoadError(f"{path}: is not a regular file and holds more than {STREAM_LIMIT >> 20} MiB; "
                             "an ONNX model read from a pipe or device must be smaller (or save it to a file)")
    return onnx.load_model_from_string(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a small text file (report, recipe, profile, CSV) atomically (see `Outputs`)."""
    with Outputs() as outputs:
        outputs.write_text(path, text)
        outputs.commit()
    return Path(path)


def ensure_not_input(output: str | os.PathLike, input_path: str | os.PathLike | None, allow: bool) -> None:
    """Refuse to write over the model we read, unless the user asked for exactly that."""
    if input_path is None or allow:
        return
    out, src = Path(output), Path(input_path)
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise TailorError(f"{output}: is the input model; choose another output or pass --overwrite-input")


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, in one line and before any work, an output that could not be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: folder {folder} is not writable")
    return path


def check_outputs(*paths: str | os.PathLike | None) -> None:
    """Every output of one run writable and no two the same file: checked before the run's work starts."""
    seen: dict[Path, str] = {}
    for path in filter(None, paths):
        resolved = check_writable(path).resolve()
        if resolved in seen:
            raise OutputError(f"{path}: named for two outputs (also {seen[resolved]}); give each its own file")
        seen[resolved] = str(path)


def save(model: Model, path: str | os.PathLike, input_path: str | os.PathLike | None = None,
         overwrite_input: bool = False) -> Path:
    """Write `model` to `path` atomically; large weights go to a weights file beside it (see the module doc)."""
    with Outputs() as outputs:
        outputs.write_model(model, path, input_path, overwrite_input)
        outputs.commit()
    return Path(path)


class Outputs:
    """Files written together, all or none: each is written to a unique temporary in its destination
    folder and fsynced; `commit` renames them into place, in the order they were written. Leaving the
    `with` block without a commit (an error, Ctrl-C) removes every temporary."""

    def __init__(self):
        self._staged: list[tuple[Path, Path, bool]] = []  # (temporary, destination, may replace a file)
        self._after_commit: list = []

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()

    def reserve(self, path: str | os.PathLike, suffix: str = ".tmp", replace: bool = True) -> Path:
        """A fresh temporary that `commit` renames to `path`; the caller writes it."""
        path = check_writable(path)
        if any(dest == path for _, dest, _ in self._staged):
            raise OutputError(f"{path}: named for two outputs of the same run")
        folder = path.parent if str(path.parent) else Path(".")
        remove_stale_temporaries(folder)
        try:
            handle, name = tempfile.mkstemp(prefix=tagged_prefix(), suffix=suffix, dir=folder)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
        try:  # mkstemp makes it private (0600); an output gets the mode any new file gets here
            os.fchmod(handle, 0o666 & ~_umask())
        finally:
            os.close(handle)
        self._staged.append((Path(name), path, replace))
        return Path(name)

    def write_bytes(self, path: str | os.PathLike, data: bytes, replace: bool = True) -> Path:
        staged = self.reserve(path, replace=replace)
        with _writing(path):
            staged.write_bytes(data)
        return staged

    def write_text(self, path: str | os.PathLike, text: str) -> Path:
        return self.write_bytes(path, text.encode())

    def write_model(self, model: Model, path: str | os.PathLike, input_path: str | os.PathLike | None = None,
                    overwrite_input: bool = False) -> None:
        """Stage `model` for `path`: its weights file first (when it needs one), then its graph."""
        path = Path(path)
        ensure_not_input(path, input_path, overwrite_input)
        check_writable(path)
        if large.weight_bytes(model.proto) <= _EXTERNAL_DATA_THRESHOLD and model.fits:
            self.write_bytes(path, model.serialized)
            return
        data_path = self._fresh_weights_name(path)
        light = large.lighten(model.proto, _EXTERNAL_FROM_BYTES, data_path.name)
        staged = self.reserve(data_path, replace=False)
        with _writing(data_path):
            with open(staged, "wb") as fh:
                for ref in light.proto.graph.initializer:
                    if ref.name not in light.held:
                        continue
                    offset = -fh.tell() % _ALIGNMENT
                    fh.write(b"\0" * offset)
                    data = large.tensor_bytes(light.held[ref.name])
                    _point(ref, fh.tell(), len(data))
                    fh.write(data)
                    del data
        self.write_bytes(path, light.proto.SerializeToString(deterministic=True))
        # Read now, before the commit replaces them: what the replaced graph and the input read.
        replaced, inputs = _weights_read_by(path), _weights_read_by(Path(input_path)) if input_path else set()
        self._after_commit.append(lambda: self._drop_replaced(path, replaced - inputs))

    def commit(self) -> None:
        """Flush every staged file to disk, then rename each into place (weights before the graph that
        reads them): a full disk that shows only when flushing still fails before anything is replaced."""
        for staged, path, _ in self._staged:
            with _writing(path):
                with open(staged, "rb+") as fh:
                    os.fsync(fh.fileno())
        renamed = 0
        try:
            for staged, path, replace in self._staged:
                if not replace and path.exists():  # a weights file that appeared since it was named: never clobber
                    raise OutputError(f"{path}: appeared while writing; nothing was replaced")
                os.replace(staged, path)
                renamed += 1
        except BaseException:
            # A weights file renamed into place whose graph was not is read by nothing: take it back.
            if renamed and not self._staged[renamed - 1][2]:
                self._staged[renamed - 1][1].unlink(missing_ok=True)
            del self._staged[:renamed]
            raise
        for folder in {path.parent for _, path, _ in self._staged}:
            _fsync_folder(folder)
        self._staged.clear()
        for action in self._after_commit:
            action()
        self._after_commit.clear()

    def discard(self) -> None:
        for staged, _, _ in self._staged:
            staged.unlink(missing_ok=True)
        self._staged.clear()
        self._after_commit.clear()

    def _fresh_weights_name(self, path: Path) -> Path:
        """`<model>.data`, or `<model>.<random>.data` when a file (or another output) has that name."""
        taken = {dest for _, dest, _ in self._staged}
        candidate = path.with_name(path.name + ".data")
        while candidate.exists() or candidate in taken:
            candidate = path.with_name(f"{path.name}.{secrets.token_hex(4)}.data")
        return candidate

    @staticmethod
    def _drop_replaced(path: Path, candidates: set[str]) -> None:
        """Remove the weights files the replaced graph at `path` read, when they were ours for `path`
        and the new graph does not read them."""
        mine = re.compile(re.escape(path.name) + r"(\.[0-9a-f]{8})?\.data")
        for name in candidates - _weights_read_by(path):
            if mine.fullmatch(name):
                try:
                    (path.parent / name).unlink(missing_ok=True)
                except OSError:  # the new pair is written; an old file we may not remove only costs space
                    pass


def _umask() -> int:
    mask = os.umask(0o22)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _weights_read_by(path: Path) -> set[str]:
    """The external data files the ONNX graph at `path` reads (empty when there is none or it does not parse)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # no file, not ONNX: it reads nothing we could remove
        return set()
    return {entry.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
            for entry in t.external_data if entry.key == "location"}


def _point(ref: onnx.TensorProto, offset: int, length: int) -> None:
    for entry in ref.external_data:
        if entry.key == "offset":
            entry.value = str(offset)
        elif entry.key == "length":
            entry.value = str(length)


class _writing:
    """Turns a failed write (a full disk, a lost permission) into one line naming the output."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, OSError):
            raise OutputError(f"{self.path}: cannot write: {exc.strerror or exc}") from None
        return False


def _fsync_folder(folder: Path) -> None:
    """Make the renames themselves durable (POSIX); where a folder cannot be opened, skip."""
    try:
        handle = os.open(folder if str(folder) else ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
