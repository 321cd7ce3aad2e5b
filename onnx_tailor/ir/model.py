"""`Model`: an immutable, canonical ONNX model and the graph facts derived from it.

Passes, analysis and the cost model all read a `Model`; none of them edits
one. A rewrite imports a fresh onnx-graphsurgeon graph (`to_graphsurgeon`),
changes that, and wraps the result in a new `Model` (`from_graphsurgeon`),
so an input model is never mutated however a pass misbehaves.

Besides the proto, a `Model` carries `input_shapes`: the concrete shape of each
graph input used for shape-dependent work (MAC counts, activation sizes,
numerical verification). The proto itself keeps its dynamic dimensions; a
symbolic batch dimension counts as 1 unless the user says otherwise.
"""

from __future__ import annotations

import hashlib
import logging
import math
from functools import cached_property
from typing import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx import numpy_helper

from ..errors import InputShapeError, ModelTooLargeError
from . import large
from .batch import batch_layout
from .cleanup import lift_constants, name_nodes
from .roundtrip import export, import_recorded, toposort
from .shapes import TensorInfo, concrete_tensor_info, infer_shapes
from .subgraphs import TypedShape, implicit_reads, standalone_body, subgraphs

# onnx-graphsurgeon logs every cleanup at INFO; that noise is not the user's.
logging.getLogger("onnx_graphsurgeon").setLevel(logging.WARNING)
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.WARNING

Shape = tuple[int, ...]


def parse_input_shapes(specs: Mapping[str, Shape] | None) -> dict[str, Shape]:
    return {name: tuple(int(d) for d in dims) for name, dims in (specs or {}).items()}


def with_metadata(proto: onnx.ModelProto, doc_string: str, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """A copy of `proto` with this model description and these `metadata_props` (in order), and no others."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.ClearField("doc_string")  # not set to "": an empty field present would serialize differently
    if doc_string:
        out.doc_string = doc_string
    del out.metadata_props[:]
    onnx.helper.set_model_props(out, dict(metadata))
    return out

class Model:
    """A canonical ONNX model (see `passes.canonicalize`) with lazily derived graph facts."""

    def __init__(self, proto: onnx.ModelProto, input_shapes: Mapping[str, Shape] | None = None,
                 probe_inputs: Mapping[str, np.ndarray] | None = None, shapes_inferred: bool = False,
                 sketch: bool = False, tensor_info: Mapping[str, TensorInfo] | None = None):
        """`shapes_inferred`: the proto's value_info is onnx's inference on this very graph, stale shapes
        dropped first (`from_graphsurgeon`), so `tensor_info` need not infer again at declared input shapes.
        `sketch`: a model only ever scored, never run nor read for weight values: what a rewrite makes of it
        (`from_graphsurgeon`) keeps only the type and dims of its large float weights (`SKETCHED_FROM`).
        `tensor_info`: the concrete shapes of its activations, when already known (a region cut out of a
        model has that model's, `regions.extract`): `tensor_info` then infers nothing."""
        self._proto = proto
        self.shapes_inferred = shapes_inferred
        self.sketch = sketch
        if tensor_info is not None:  # what the cached property below would compute, given
            self.__dict__["tensor_info"] = dict(tensor_info)
        self._probe_inputs = dict(probe_inputs) if probe_inputs else None
        self._shape_overrides = parse_input_shapes(input_shapes)
        unknown = set(self._shape_overrides) - {i.name for i in self.graph_inputs}
        if unknown:
            raise InputShapeError(
                f"--input-shape names {', '.join(sorted(unknown))}, which the model has no input called; "
                f"its inputs are: {', '.join(i.name for i in self.graph_inputs)}"
            )
        self._check_overrides()

    # -- the proto and its identity -------------------------------------------------

    @property
    def proto(self) -> onnx.ModelProto:
        """The underlying proto. Treat it as read-only: `Model`s share it freely."""
        return self._proto

    @cached_property
    def fits(self) -> bool:
        """Whether protobuf can serialize the model whole (under 2 GiB); see `ir.large` for one that cannot."""
        return large.fits(self._proto)

    @cached_property
    def serialized(self) -> bytes:
        """The deterministic serialization; only for a model that `fits` (`large.inference_session` takes any)."""
        if not self.fits:
            raise ModelTooLargeError("this model is over protobuf's 2 GiB limit and cannot be serialized whole; "
                                     "save it to a file (its weights go to external data)")
        return self._proto.SerializeToString(deterministic=True)

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the deterministic serialization without the model's description and metadata:
        equal graphs hash equal, whatever the file says about where it came from."""
        if not self.fits:  # past 2 GiB: its light form and its held weights (`large.content_hash`)
            return large.content_hash(self._proto)
        if not self._proto.doc_string and not self._proto.metadata_props:
            return hashlib.sha256(self.serialized).hexdigest()
        bare = with_metadata(self._proto, "", {})
        return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()

    def with_metadata(self, doc_string: str, metadata: Mapping[str, str]) -> "Model":
        """The same graph with this description and these `metadata_props` (in this order), and no others."""
        return self.with_proto(with_metadata(self._proto, doc_string, metadata))

    def __reduce__(self):
        # To another process of a parallel search: the proto and what the constructor takes, not the
        # derived facts (several times the proto's size), which the receiver derives again when it needs them;
        # but the content hash when known: a few bytes, where deriving it serializes the whole proto again
        # (a third of what a parallel search's main process computes itself on the PaddleOCR classifier).
        known = {"content_hash": self.__dict__["content_hash"]} if "content_hash" in self.__dict__ else None
        return Model, (self._proto, self._shape_overrides, self._probe_inputs), known

    def with_proto(self, proto: onnx.ModelProto) -> "Model":
        """A new model with the same input shapes around another proto."""
        return Model(proto, self._shape_overrides, self._probe_inputs)

    def with_input_shapes(self, input_shapes: Mapping[str, Shape]) -> "Model":
        return Model(self._proto, {**self._shape_overrides, **parse_input_shapes(input_shapes)})

    def with_probe_inputs(self, feeds: Mapping[str, np.ndarray]) -> "Model":
        """The same model, whose shapes are probed on `feeds` (one run's inputs of real data) instead of
        seeded random inputs, at their shapes: for models whose shapes depend on input values."""
        return Model(self._proto, {**self._shape_overrides, **{k: v.shape for k, v in feeds.items()}}, feeds)

    @property
    def probe_inputs(self) -> dict[str, np.ndarray] | None:
        """The inputs shapes are probed on when onnx's inference cannot tell them, when given."""
        return self._probe_inputs

    # -- graph structure ------------------------------------------------------------

    @property
    def graph(self) -> onnx.GraphProto:
        return self._proto.graph

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self._proto.graph.node)

    @cached_property
    def _initializer_names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.graph.initializer)

    @property
    def graph_inputs(self) -> list[onnx.ValueInfoProto]:
        """Graph inputs that are real inputs (not initializers listed as inputs)."""
        return [i for i in self.graph.input if i.name not in self._initializer_names]

    @cached_property
    def graph_output_names(self) -> frozenset[str]:
        return frozenset(o.name for o in self.graph.output)

    @cached_property
    def _node_by_name(self) -> dict[str, onnx.NodeProto]:
        return {n.name: n for n in self.graph.node}

    @cached_property
    def _producer(self) -> dict[str, onnx.NodeProto]:
        return {out: n for n in self.graph.node for out in n.output if out}

    @cached_property
    def _implicit_reads(self) -> dict[str, list[str]]:
        return {n.name: implicit_reads(n) for n in self.graph.node if subgraphs(n)}

    def reads(self, node: onnx.NodeProto) -> list[str]:
        """Every tensor `node` reads: its inputs, and what its subgraphs read from this graph."""
        return [*node.input, *self._implicit_reads.get(node.name, ())]

    @cached_property
    def _consumers(self) -> dict[str, list[onnx.NodeProto]]:
        # A tensor read inside an If/Loop/Scan body is read by that node: a rewrite that
        # changes the tensor must see the subgraph as one of its readers.
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for name in dict.fromkeys(self.reads(n)):  # a node reading x twice consumes it once
                if name:
                    consumers.setdefault(name, []).append(n)
        return consumers

    def node(self, name: str) -> onnx.NodeProto:
        return self._node_by_name[name]

    def has_node(self, name: str) -> bool:
        return name in self._node_by_name

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        return self._producer.get(tensor)

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return self._consumers.get(tensor, [])

    def is_graph_output(self, tensor: str) -> bool:
        return tensor in self.graph_output_names

    @cached_property
    def _graph_input_names(self) -> frozenset[str]:
        return frozenset(i.name for i in self.graph_inputs)

    def is_graph_input(self, tensor: str) -> bool:
        """Whether `tensor` is a real graph input (not an initializer listed as one)."""
        return tensor in self._graph_input_names

    def sole_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The only reader of `tensor`, or None if it has several or is a graph output."""
        readers = self.consumers(tensor)
        if len(readers) != 1 or self.is_graph_output(tensor):
            return None
        return readers[0]

    # -- constants and attributes ---------------------------------------------------

    @cached_property
    def _initializers(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self.graph.initializer}

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer (weights, fixed shapes), or None for activations."""
        proto = self._initializers.get(tensor)
        return None if proto is None else numpy_helper.to_array(proto)

    def initializer(self, tensor: str) -> onnx.TensorProto | None:
        """The raw initializer proto (dtype and dims without decoding the data)."""
        return self._initializers.get(tensor)

    def is_constant(self, tensor: str) -> bool:
        return tensor in self._initializers

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    # -- shapes -------------------------------------------------------------------

    @cached_property
    def _shaped_value_infos(self) -> dict[str, onnx.ValueInfoProto]:
        """The entry that declares each tensor's shape: of the graph's inputs, value_info and outputs, the last
        with a shape. Its dims are read only when asked: a rewritten region is asked about a few of its tensors."""
        return {vi.name: vi for vi in (*self.graph.input, *self.graph.value_info, *self.graph.output)
                if vi.type.tensor_type.HasField("shape")}

    @cached_property
    def _declared_shapes(self) -> dict[str, tuple]:
        """The shapes read so far from `_shaped_value_infos`."""
        return {}

    def declared_shape(self, tensor: str) -> tuple | None:
        """The shape the proto declares (symbolic dims as names), or None if unknown. A weight's own dims
        win over any value_info entry."""
        weight = self._initializers.get(tensor)
        if weight is not None:
            return tuple(weight.dims)
        shape = self._declared_shapes.get(tensor)
        if shape is None:
            vi = self._shaped_value_infos.get(tensor)
            if vi is None:
                return None
            shape = self._declared_shapes[tensor] = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim
            )
        return shape

    def channels(self, tensor: str) -> int | None:
        """Dimension 1 (channels, in NCHW) of a tensor when the model fixes it."""
        shape = self.declared_shape(tensor)
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int) or shape[1] <= 0:
            return None
        return shape[1]

    @cached_property
    def input_shapes(self) -> dict[str, Shape]:
        """Concrete shapes for every graph input, for analysis and verification.

        Overrides given at load win; otherwise a dynamic batch dimension (on the
        input's batch axis, `batch.batch_layout`) becomes 1. Any other dynamic
        dimension needs an override: one error names every input that needs one.
        """
        layout = None  # where the batch is matters only to an input with a dynamic dimension
        shapes, missing = {}, []
        for vi in self.graph_inputs:
            if vi.name in self._shape_overrides:
                shapes[vi.name] = self._shape_overrides[vi.name]
                continue
            dims = self.declared_shape(vi.name) or ()
            if all(_fixed(d) for d in dims):
                shapes[vi.name] = tuple(dims)
                continue
            layout = layout or batch_layout(self)
            batch = layout.inputs.get(vi.name)
            concrete = [d if _fixed(d) else (1 if axis == batch else None) for axis, d in enumerate(dims)]
            if None in concrete:
                missing.append((vi.name, dims, concrete))
            shapes[vi.name] = tuple(concrete)
        if missing:
            shown = "; ".join(f"'{name}' [{_shown(dims)}]" for name, dims, _ in missing)
            example = " ".join(f"--input-shape {name}=" + ",".join("N" if d is None else str(d) for d in concrete)
                               for name, _, concrete in missing)
            raise InputShapeError(f"{len(missing)} input(s) with unknown dimensions besides the batch: {shown}; "
                                  f"give a concrete shape, e.g. {example}")
        return shapes

    def _check_overrides(self) -> None:
        """A given shape must keep the rank and every fixed dimension the model declares."""
        for name, given in self._shape_overrides.items():
            declared = self.declared_shape(name)
            if declared is None:
                continue
            clash = len(given) != len(declared) or any(_fixed(d) and d != g for d, g in zip(declared, given))
            if clash:
                raise InputShapeError(f"--input-shape {name}={','.join(map(str, given))} contradicts the model, "
                                      f"which declares '{name}' as [{_shown(declared)}] (? = free)")

    @cached_property
    def tensor_info(self) -> dict[str, TensorInfo]:
        """Concrete shape and element type of every activation at `input_shapes`."""
        return concrete_tensor_info(self)

    @property
    def shape_overrides(self) -> dict[str, Shape]:
        return dict(self._shape_overrides)

    # -- subgraphs ----------------------------------------------------------------------

    def bodies(self, node: onnx.NodeProto) -> list[tuple[str, "Model"]]:
        """(attribute, model) for every subgraph of `node`, each lifted into a model of its own whose
        inputs have this model's concrete shapes (see `ir.subgraphs`), its constants lifted and its nodes
        named as the canonical form has them; empty for ordinary nodes."""
        owned = subgraphs(node)
        if not owned:
            return []
        outer = {name: self._typed(name) for name in self._implicit_reads[node.name] if not self.is_constant(name)}
        constants = {name: self._initializers[name] for name in self._implicit_reads[node.name]
                     if self.is_constant(name)}
        found = []
        for attribute, graph in owned:
            formal = _formal_inputs(self, node, graph)
            body = standalone_body(graph, formal, outer, constants, self._proto)
            found.append((attribute, Model(name_nodes(lift_constants(body)))))
        return found

    def _typed(self, tensor: str) -> TypedShape:
        known = self.tensor_info.get(tensor)
        if known is not None:
            return known.shape, known.elem_type
        return None, self._elem_types.get(tensor, onnx.TensorProto.FLOAT)

    @cached_property
    def _elem_types(self) -> dict[str, int]:
        return {vi.name: vi.type.tensor_type.elem_type
                for vi in list(self.graph.input) + list(self.graph.value_info) + list(self.graph.output)}

    # -- onnx-graphsurgeon round trip -------------------------------------------------

    def to_graphsurgeon(self) -> gs.Graph:
        """A fresh graph to rewrite. Its constants share arrays with this model: replace
        a `gs.Constant`'s values with a new array, never edit them in place. A sketch's graph remembers its
        nodes' protos, so that only what the rewrite changed is exported again (`ir.roundtrip`)."""
        return import_recorded(self._proto) if self.sketch else gs.import_onnx(self._proto)

    def from_graphsurgeon(self, graph: gs.Graph) -> "Model":
        """Wrap a rewritten graph as a new model with this model's input shapes.

        Stale intermediate shapes are dropped and inferred again, because a
        rewrite may change channel counts that the old value_info still states.
        """
        toposort(graph.cleanup(remove_unused_graph_inputs=False))
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Variable) and tensor not in graph.inputs and tensor not in graph.outputs:
                tensor.shape = None
            elif self.sketch and isinstance(tensor, gs.Constant):
                _sketch_constant(tensor)
        return self.rewritten(export(graph))

    def rewritten(self, proto: onnx.ModelProto) -> "Model":
        """A rewrite of this model, whose graph `proto` holds without value_info: as a model with this one's
        opset, IR version, producer, input shapes and sketch flag, its shapes inferred again."""
        proto.ir_version = self._proto.ir_version
        del proto.opset_import[:]
        proto.opset_import.extend(self._proto.opset_import)
        proto.producer_name = self._proto.producer_name
        proto.producer_version = self._proto.producer_version
        return Model(infer_shapes(proto), self._shape_overrides, self._probe_inputs, shapes_inferred=True,
                     sketch=self.sketch)

    def __repr__(self) -> str:
        return f"<Model {self.graph.name or '?'}: {len(self.graph.node)} nodes, {self.content_hash[:12]}>"


# Float weights of at least this many elements lose their values in a sketch. Smaller constants keep theirs: the
# cost model reads scalars (activation bounds) and shape inference reads small float tensors (Resize's scales).
SKETCHED_FROM = 256
_SKETCHED_TYPES = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.float16): onnx.TensorProto.FLOAT16,
                   np.dtype(np.float64): onnx.TensorProto.DOUBLE}


def _sketch_constant(tensor: gs.Constant) -> None:
    """Replace a large float weight's values by its type and dims alone: exporting, copying and inferring
    shapes over values that nothing reads is most of a region preview's rewrite. Reading them fails loudly."""
    data_type = _SKETCHED_TYPES.get(tensor.dtype) if tensor.export_dtype == tensor.dtype else None
    if data_type is not None and math.prod(tensor.shape) >= SKETCHED_FROM:
        tensor.values = LazyValues(onnx.TensorProto(name=tensor.name, data_type=data_type, dims=tensor.shape))


def _formal_inputs(model: Model, node: onnx.NodeProto, graph: onnx.GraphProto) -> list[TypedShape]:
    """Types of a subgraph's own inputs, from the node's inputs: Loop's body takes (iteration
    number, condition, carried values...); Scan's takes (states..., one slice of each scanned input)."""
    def typed(name: str, drop_axis: int | None = None) -> TypedShape:
        shape, elem_type = model._typed(name)
        if shape is not None and drop_axis is not None:
            shape = shape[:drop_axis % len(shape)] + shape[drop_axis % len(shape) + 1:]
        return shape, elem_type

    if node.op_type == "Loop":
        return [((), onnx.TensorProto.INT64), ((), onnx.TensorProto.BOOL), *(typed(i) for i in node.input[2:])]
    if node.op_type == "Scan":
        scanned = model.attr(node, "num_scan_inputs")
        states = len(node.input) - scanned
        axes = model.attr(node, "scan_input_axes") or [0] * scanned
        return [*(typed(i) for i in node.input[:states]),
                *(typed(i, axes[k]) for k, i in enumerate(node.input[states:]))]
    return [(None, vi.type.tensor_type.elem_type) for vi in graph.input]  # If has none


def _fixed(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _shown(dims) -> str:
    """`2,?,128`: a declared shape as errors show it."""
    return ",".join(str(d) if _fixed(d) else "?" for d in dims)
