"""Edits that keep a graph's wiring: new constants for some nodes' inputs, new values for some attributes.

A channel edit (`channel_edit`) or a densified depthwise conv
(`densify_depthwise`) adds, removes and rewires no node: it points weight
inputs at new constants and sets attributes (a conv's `group`). Planned once
as a list of such edits, it is applied either by
onnx-graphsurgeon, as every rewrite that is run or saved is, or, on a sketch
(`ir.Model`'s `sketch`: a model only ever scored), straight to a copy of the
proto, which gives the model graphsurgeon's round trip gives (the same nodes,
constants in the same order and sketched alike, the same inferred shapes)
without importing, cleaning, sorting and exporting the graph (about a
quarter of a region preview on the 640x640 detector).

    plan (channel_edit.edit_plan)  ->  by_graphsurgeon(model, edits)   a real model
                                   ->  on_sketch(model, edits)         a sketch: the proto, edited in place of a copy

tests/passes/test_node_edits.py checks that both give the same proto on every
site of every pass on the test models (`NATIVE` switches the second off).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from ..ir import Model
from ..ir.model import SKETCHED_FROM
from .graph_edit import nodes_by_name, set_constant_input, unique_name

# Whether sketches are edited on their protos; False makes every edit go through graphsurgeon (for the tests
# that compare the two).
NATIVE = True
# The float types whose large constants a sketch keeps as type and dims only (`ir.model._sketch_constant`).
_SKETCHED = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


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


Edit = SetConstant | SetAttribute | Written


def apply_edits(model: Model, edits: Sequence[Edit]) -> Model:
    """`model` with `edits` applied in order: on the proto for a sketch, by graphsurgeon otherwise."""
    if NATIVE and model.sketch and not any(isinstance(e, Written) for e in edits):
        return on_sketch(model, edits)
    return by_graphsurgeon(model, edits)


def by_graphsurgeon(model: Model, edits: Sequence[Edit]) -> Model:
    graph = model.to_graphsurgeon()
    nodes = nodes_by_name(graph)
    for edit in edits:
        node = nodes[edit.node]
        if isinstance(edit, SetConstant):
            set_constant_input(graph, node, edit.index, edit.value, edit.suffix)
        elif isinstance(edit, SetAttribute):
            node.attrs[edit.name] = edit.value
        else:
            edit.write(graph, node)
    return model.from_graphsurgeon(graph)


def on_sketch(model: Model, edits: Sequence[Edit]) -> Model:
    """What `by_graphsurgeon` gives for the sketch `model`, built on its proto: edited nodes are copies of
    their protos; constants follow the nodes that read them, in graphsurgeon's order (its `tensors()`: graph
    inputs, then each node's inputs and outputs), with those no node reads any more dropped and the large
    float ones sketched; value_info is inferred again."""
    source = model.proto.graph
    nodes = list(source.node)
    position = {node.name: i for i, node in enumerate(nodes)}
    constants = {t.name: t for t in source.initializer}
    for edit in edits:
        i = position[edit.node]
        node = onnx.NodeProto()
        node.CopyFrom(nodes[i])
        if isinstance(edit, SetConstant):
            name = _fresh_name(source, nodes, f"{edit.node}.{edit.suffix}")
            constants[name] = _constant(name, np.ascontiguousarray(edit.value))
            if edit.index < len(node.input):
                node.input[edit.index] = name
            else:  # graphsurgeon pads the missing optional inputs with empty ones
                node.input.extend([""] * (edit.index - len(node.input)) + [name])
        elif isinstance(edit, SetAttribute):
            _set_attribute(node, edit.name, edit.value)
        else:
            raise TypeError(f"a sketch cannot be edited by {edit!r}")
        nodes[i] = node
    nodes = _sorted(nodes)
    if nodes is None:
        return by_graphsurgeon(model, edits)
    proto = onnx.ModelProto()
    graph = proto.graph
    graph.name = source.name
    if source.doc_string:  # as `onnx.helper.make_graph` leaves an empty one unset
        graph.doc_string = source.doc_string
    graph.node.extend(nodes)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    read = dict.fromkeys(t for t in (*(i.name for i in source.input),
                                     *(t for n in nodes for t in (*n.input, *n.output))) if t in constants)
    graph.initializer.extend(_sketched(constants[t]) for t in read)
    return model.rewritten(proto)


def _sorted(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto] | None:
    """The nodes in graphsurgeon's order (`ir.roundtrip.toposort`: a stable sort by depth, one more than the
    deepest producer's), or None when a node comes before one of its producers or holds a subgraph (whose
    reads count too): graphsurgeon's own sort then decides."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return None
    producers = {t: i for i, node in enumerate(nodes) for t in node.output if t}
    levels = []
    for i, node in enumerate(nodes):
        deepest = -1
        for tensor in node.input:
            j = producers.get(tensor) if tensor else None
            if j is None:
                continue
            if j >= i:
                return None
            deepest = max(deepest, levels[j])
        levels.append(deepest + 1)
    if all(a <= b for a, b in zip(levels, levels[1:])):
        return nodes
    return [node for _, node in sorted(zip(levels, nodes), key=lambda pair: pair[0])]


def _fresh_name(graph: onnx.GraphProto, nodes: list[onnx.NodeProto], base: str) -> str:
    """`graph_edit.fresh_name` on the graph as edited so far."""
    taken = {t.name for t in graph.input} | {n.name for n in nodes}
    taken.update(t for n in nodes for t in (*n.input, *n.output))
    return unique_name(base, taken)


def _constant(name: str, value: np.ndarray) -> onnx.TensorProto:
    """The new constant as a sketch keeps it (`_sketched`), its values never written when it is large."""
    data_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    if data_type in _SKETCHED and value.size >= SKETCHED_FROM:
        return onnx.TensorProto(name=name, data_type=data_type, dims=value.shape)
    return numpy_helper.from_array(value, name)


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
