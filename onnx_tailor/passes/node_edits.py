"""Small rewrites as data: new constants for nodes' inputs, new attribute values, a node added in place of others.

A channel edit (`channel_edit`) or a densified depthwise conv
(`densify_depthwise`) rewires no node: it points weight inputs at new
constants and sets attributes (a conv's `group`); a fused expansion
(`fuse_ibn_expansion`) adds one node that takes over a tensor, and what fed
only the old producer falls away. Planned once as a list of such edits, a
rewrite is applied either by onnx-graphsurgeon, as every rewrite that is run
or saved is, or, on a sketch (`ir.Model`'s `sketch`: a model only ever
scored), straight to a copy of the proto. That gives the model graphsurgeon's
round trip gives (the same nodes in graphsurgeon's order, its cleanup's
leftovers dropped, constants in the same order and sketched alike, the same
inferred shapes) without importing, cleaning, sorting and exporting the graph
(about a quarter of a region preview on the 640x640 detector).

    plan (channel_edit.edit_plan, ...)  ->  by_graphsurgeon(model, edits)   a real model
                                        ->  on_sketch(model, edits)         a sketch: a copy of its proto, edited

tests/passes/test_node_edits.py checks that both give the same proto, byte for
byte, on every site of every pass on the test models (`NATIVE` switches the
second off).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx import numpy_helper

from ..ir import Model
from ..ir.model import SKETCHED_FROM
from .graph_edit import fresh_name, nodes_by_name, set_constant_input, unique_name

# Whether sketches are edited on their protos; False makes every edit go through graphsurgeon (for the tests
# that compare the two).
NATIVE = True
# The float types whose large constants a sketch keeps as type and dims only (`ir.model._sketch_constant`).
_SKETCHED = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
_PLAIN = (onnx.AttributeProto.INT, onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING, onnx.AttributeProto.INTS,
          onnx.AttributeProto.FLOATS, onnx.AttributeProto.STRINGS)


@dataclass(frozen=True, eq=False)
class SetConstant:
    """Input `index` of node `node` becomes a new constant named `<node>.<suffix>` (made unique)."""

    node: str
    index: int
    value: np.ndarray
    suffix: str


@dataclass(frozen=True)
class SetAttribute:
    node: str
    name: str
    value: int


@dataclass(frozen=True, eq=False)
class Written:
    """Whatever `write` does to the graphsurgeon node (a refit's weights): graphsurgeon only."""

    node: str
    write: Callable[[gs.Graph, gs.Node], None]


@dataclass(frozen=True, eq=False)
class NewTensor:
    """A new constant input of an `AddNode`, named `name` (made unique)."""

    name: str
    value: np.ndarray


@dataclass(frozen=True, eq=False)
class AddNode:
    """A new node named `name` (made unique) that reads `inputs` (tensor names or new constants) and writes
    `outputs` in place of their producers, which stop writing them; what then feeds no graph output is
    dropped, as graphsurgeon's cleanup drops it. `attrs`: plain values (`plain_attributes`)."""

    op: str
    name: str
    attrs: dict
    inputs: tuple
    outputs: tuple[str, ...]


Edit = SetConstant | SetAttribute | Written | AddNode


def apply_edits(model: Model, edits: Sequence[Edit]) -> Model:
    """`model` with `edits` applied in order: on the proto for a sketch, by graphsurgeon otherwise."""
    if NATIVE and model.sketch and not any(isinstance(e, Written) for e in edits):
        return on_sketch(model, edits)
    return by_graphsurgeon(model, edits)


def constant_value(model: Model, node: onnx.NodeProto, index: int) -> np.ndarray | None:
    """`graph_edit.constant_input` read on `model`: the value of input `index` when it is a constant."""
    return model.constant(node.input[index]) if index < len(node.input) and node.input[index] else None


def plain_attributes(node: onnx.NodeProto) -> dict | None:
    """`node`'s attributes as graphsurgeon imports them (strings decoded, lists as lists), or None when one
    is not a plain number, string or list of them."""
    found = {}
    for attribute in node.attribute:
        if attribute.ref_attr_name or attribute.type not in _PLAIN:
            return None
        value = onnx.helper.get_attribute_value(attribute)
        if attribute.type == onnx.AttributeProto.STRING:
            value = value.decode()
        elif attribute.type == onnx.AttributeProto.STRINGS:
            value = [v.decode() for v in value]
        found[attribute.name] = list(value) if isinstance(value, (list, tuple)) else value
    return found


def by_graphsurgeon(model: Model, edits: Sequence[Edit]) -> Model:
    graph = model.to_graphsurgeon()
    nodes = nodes_by_name(graph)
    for edit in edits:
        if isinstance(edit, AddNode):
            _add_by_graphsurgeon(graph, edit)
            continue
        node = nodes[edit.node]
        if isinstance(edit, SetConstant):
            set_constant_input(graph, node, edit.index, edit.value, edit.suffix)
        elif isinstance(edit, SetAttribute):
            node.attrs[edit.name] = edit.value
        else:
            edit.write(graph, node)
    return model.from_graphsurgeon(graph)


def _add_by_graphsurgeon(graph: gs.Graph, edit: AddNode) -> None:
    tensors = graph.tensors()
    name = fresh_name(graph, edit.name)
    inputs = [gs.Constant(fresh_name(graph, i.name), np.ascontiguousarray(i.value)) if isinstance(i, NewTensor)
              else tensors[i] for i in edit.inputs]
    outputs = [tensors[t] for t in edit.outputs]
    for tensor in outputs:
        for producer in list(tensor.inputs):
            producer.outputs.remove(tensor)
    graph.nodes.append(gs.Node(edit.op, name=name, attrs=dict(edit.attrs), inputs=inputs, outputs=outputs))


def on_sketch(model: Model, edits: Sequence[Edit]) -> Model:
    """What `by_graphsurgeon` gives for the sketch `model`, built on its proto: edited nodes are copies of
    their protos; constants follow the nodes that read them, in graphsurgeon's order (its `tensors()`: graph
    inputs, then each node's inputs and outputs), with those no node reads any more dropped and the large
    float ones sketched; value_info is inferred again."""
    source, known = model.proto.graph, _source(model)
    nodes = list(source.node)
    constants = {t.name: t for t in source.initializer}
    names = _Names(source, nodes, known.taken)
    added = rewired = False  # rewired: a node reads from other nodes than before
    for edit in edits:
        if isinstance(edit, AddNode):
            nodes.append(_add_on_proto(names, nodes, constants, edit))
            added = rewired = True
            continue
        i = known.position[edit.node]
        node = onnx.NodeProto()
        node.CopyFrom(nodes[i])
        if isinstance(edit, SetConstant):
            name = names.fresh(f"{edit.node}.{edit.suffix}")
            names.take(name)
            constants[name] = _constant(name, edit.value)
            if edit.index < len(node.input):
                names.release(node.input[edit.index])
                rewired |= model.producer(node.input[edit.index]) is not None
                node.input[edit.index] = name
            else:  # graphsurgeon pads the missing optional inputs with empty ones
                node.input.extend([""] * (edit.index - len(node.input)) + [name])
        elif isinstance(edit, SetAttribute):
            _set_attribute(node, edit.name, edit.value)
        else:
            raise TypeError(f"a sketch cannot be edited by {edit!r}")
        nodes[i] = node
    if added:
        nodes = _needed(nodes, {t.name for t in source.output})
    # graphsurgeon's order hangs on which nodes each node reads from (`_order`): new constants and attributes
    # keep the source's.
    order = _order(nodes) if rewired else known.order
    if order is None:
        return by_graphsurgeon(model, edits)
    proto = onnx.ModelProto()
    graph = proto.graph
    graph.name = source.name
    if source.doc_string:  # as `onnx.helper.make_graph` leaves an empty one unset
        graph.doc_string = source.doc_string
    graph.node.extend(nodes[i] for i in order)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    read = dict.fromkeys(t for t in (*(i.name for i in source.input),
                                     *(t for i in order for t in (*nodes[i].input, *nodes[i].output)))
                         if t in constants)
    graph.initializer.extend(_sketched(constants[t]) for t in read)
    return model.rewritten(proto)


def _add_on_proto(names: _Names, nodes: list[onnx.NodeProto], constants: dict, edit: AddNode) -> onnx.NodeProto:
    """The new node of `edit` (its producers' outputs taken over in `nodes`), its new constants in `constants`."""
    # Each name is fresh against `nodes` without the new node, which is not among them yet.
    name = names.fresh(edit.name)
    inputs = []
    for tensor in edit.inputs:
        if isinstance(tensor, NewTensor):
            inputs.append(names.fresh(tensor.name))
            constants[inputs[-1]] = _constant(inputs[-1], tensor.value)
        else:
            inputs.append(tensor)
    names.take(name, *inputs, *edit.outputs)
    taken = set(edit.outputs)
    for i, node in enumerate(nodes):
        if taken.intersection(node.output):
            kept = onnx.NodeProto()
            kept.CopyFrom(node)
            del kept.output[:]
            kept.output.extend(t for t in node.output if t not in taken)
            nodes[i] = kept
    node = onnx.helper.make_node(edit.op, inputs=inputs, outputs=list(edit.outputs), name=name)
    node.attribute.extend(OnnxExporter.export_attributes(dict(edit.attrs)))
    return node


def _needed(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """The nodes that some graph output depends on, in their order (graphsurgeon's cleanup)."""
    producer = {t: node for node in nodes for t in node.output if t}
    kept, pending = set(), [producer[t] for t in outputs if t in producer]
    while pending:
        node = pending.pop()
        if id(node) in kept:
            continue
        kept.add(id(node))
        pending.extend(producer[t] for t in node.input if t in producer)
    return [node for node in nodes if id(node) in kept]


@dataclass(frozen=True)
class _Source:
    """What every edit of one sketch starts from."""

    position: dict[str, int]  # node name -> its index
    taken: frozenset[str]  # the names of its graph inputs, nodes and their tensors (`_Names`)
    order: list[int] | None  # `_order` of its nodes


def _source(model: Model) -> _Source:
    """`model`'s `_Source`, kept while it lives: a region is edited for each of its sites."""
    found = _SOURCES.get(model)
    if found is None:
        graph = model.proto.graph
        nodes = list(graph.node)
        found = _SOURCES[model] = _Source({node.name: i for i, node in enumerate(nodes)},
                                          frozenset(_Names.walk(graph, nodes)), _order(nodes))
    return found


_SOURCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # sketch -> _Source


def _order(nodes: list[onnx.NodeProto]) -> list[int] | None:
    """The indices of the nodes in graphsurgeon's order, or None when a node holds a subgraph (whose reads
    count too) or the graph has a cycle: graphsurgeon then decides. Its `toposort` gives each node a depth (one more than its
    deepest producer's), recording nodes as a depth-first walk from each node in turn to its producers (in
    the order it reads them) finishes them, and sorts that record stably by depth."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return None
    producer = {t: i for i, node in enumerate(nodes) for t in node.output if t}
    producers = [list(dict.fromkeys(producer[t] for t in node.input if t in producer)) for node in nodes]
    depth: dict[int, int] = {}
    finished: list[int] = []
    for root in range(len(nodes)):
        if root in depth:
            continue
        stack, walking = [(root, iter(producers[root]))], {root}
        while stack:
            i, pending = stack[-1]
            for j in pending:
                if j not in depth:
                    if j in walking:
                        return None
                    walking.add(j)
                    stack.append((j, iter(producers[j])))
                    break
            else:
                stack.pop()
                walking.discard(i)
                depth[i] = 1 + max((depth[j] for j in producers[i]), default=-1)
                finished.append(i)
    return sorted(finished, key=depth.__getitem__)


class _Names:
    """`graph_edit.fresh_name` on the graph as edited so far (its inputs, and the nodes' names and tensors),
    without walking every node for each new name: the names at the start, plus those the edits took since.
    A tensor an edit stopped reading may be free again; where the answer could hang on one, every node is
    walked as before."""

    def __init__(self, graph: onnx.GraphProto, nodes: list[onnx.NodeProto], taken: frozenset[str]):
        """`taken`: `walk(graph, nodes)`, as the nodes are now."""
        self._graph, self._nodes = graph, nodes
        self._taken = set(taken)
        self._released: set[str] = set()

    @staticmethod
    def walk(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> set[str]:
        taken = {t.name for t in graph.input} | {n.name for n in nodes}
        taken.update(t for n in nodes for t in (*n.input, *n.output))
        return taken

    def fresh(self, base: str) -> str:
        name = unique_name(base, self._taken)
        if self._released and any(tried in self._released for tried in _tried(base, name)):
            name = unique_name(base, self.walk(self._graph, self._nodes))
        return name

    def take(self, *names: str) -> None:
        """`names` now in `nodes`."""
        self._taken.update(names)

    def release(self, name: str) -> None:
        """`name` no longer read where it was (perhaps read elsewhere still)."""
        self._released.add(name)


def _tried(base: str, found: str):
    """The names `unique_name(base, ...)` tried before `found`."""
    if found == base:
        return
    yield base
    index = 1
    while (tried := f"{base}_{index}") != found:
        yield tried
        index += 1


def _constant(name: str, value: np.ndarray) -> onnx.TensorProto:
    """The new constant as a sketch keeps it (`_sketched`), its values never written when it is large."""
    if sketched(value.shape, value.dtype):
        return onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(value.dtype),
                                dims=value.shape)
    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def sketched(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether a sketch keeps a new constant of this shape and type as its type and dims alone."""
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) in _SKETCHED and math.prod(shape) >= SKETCHED_FROM


def stand_in(model: Model, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """For a new constant of `model`: when `model` is a sketch that keeps only its type and dims, an array of
    them that costs nothing (every element one shared zero), so that a rewrite need not compute values no
    score reads; None when the values count."""
    if not (model.sketch and sketched(shape, dtype)):
        return None
    return np.broadcast_to(np.zeros((), dtype), shape)


def _sketched(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A large float constant as type and dims alone (`ir.model._sketch_constant`), others as they are."""
    if tensor.data_type in _SKETCHED and math.prod(tensor.dims) >= SKETCHED_FROM:
        return onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    return tensor


def _set_attribute(node: onnx.NodeProto, name: str, value: int) -> None:
    for attribute in node.attribute:
        if attribute.name == name:
            attribute.CopyFrom(onnx.helper.make_attribute(name, value))
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))
