"""Regions: a few nodes of a model cut out as a model of their own, and how far each lies from the cut.

A rewrite's preview only needs the nodes around its site: building and
shape-inferring the whole rewritten model costs O(model) for a change of a
handful of nodes. `extract` makes a small model of a set of nodes: every
tensor they read from outside becomes a graph input with the shape and type
the model gives it, every tensor they write that is read outside (or is a
graph output) becomes a graph output, and the weights they read come along.
Inside it, a tensor read outside looks like a graph output, so a node's
readers are all still visible as "something else reads this"; only whether
a tensor is a *real* graph input or output has to be asked of the model.

    model   a -> [b -> c -> d] -> e          extract(model, {b, c, d})
    extract (input a') -> b -> c -> d -> (output d')
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Iterable

import onnx

from .model import Model

# Integer tensors (shapes, indices) read from outside carry values a region cannot know: their producers come
# along, back to float activations, so shape inference inside sees what it sees in the whole model.
_VALUE_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def adjacent(model: Model, name: str) -> frozenset[str]:
    """Names of the nodes one edge away from node `name`: producers of what it reads, readers of what it writes.
    Kept per model (a model never changes): a search asks it of the same parent's nodes for every candidate's
    region."""
    known = _ADJACENT.setdefault(model, {})
    found = known.get(name)
    if found is None:
        node = model.node(name)
        found = {p.name for t in model.reads(node) if t and (p := model.producer(t)) is not None}
        found.update(c.name for t in node.output if t for c in model.consumers(t))
        found = known[name] = frozenset(found)
    return found


_ADJACENT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> node name -> adjacent(model, name)
_CONSTANT_ONLY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> node name -> _constant_only


def grow(model: Model, names: Iterable[str], hops: int) -> set[str]:
    """`names` and every node at most `hops` edges away (either direction), plus what `extract` needs to keep
    shapes and weights as the model has them: the producers of integer tensors (shape computations) and the
    layout-only chains (Reshape, DequantizeLinear...) between a constant and its reader."""
    region = {n for n in names if model.has_node(n)}
    frontier = set(region)
    for _ in range(hops):
        frontier = {a for n in frontier for a in adjacent(model, n)} - region
        region |= frontier
    pending, constant_only = list(region), _CONSTANT_ONLY.setdefault(model, {})
    while pending:
        for tensor in model.reads(model.node(pending.pop())):
            producer = model.producer(tensor) if tensor else None
            if producer is None or producer.name in region:
                continue
            if not _float_valued(model, tensor) or _constant_only(model, producer, constant_only):
                region.add(producer.name)
                pending.append(producer.name)
    return region


def _float_valued(model: Model, tensor: str) -> bool:
    info = model.tensor_info.get(tensor)
    return info is not None and info.elem_type in _VALUE_TYPES


def _constant_only(model: Model, node: onnx.NodeProto, known: dict[str, bool]) -> bool:
    """Whether `node` computes from constants alone (a DequantizeLinear of int8 weights): a weight, not an input.
    `known`: the answers so far on `model` (the walk back meets the same producers again and again, and from
    an activation it walks back to the graph's inputs: every region of a search's model asks it again)."""
    if node.name not in known:
        known[node.name] = all(not t or model.is_constant(t)
                               or ((p := model.producer(t)) is not None and _constant_only(model, p, known))
                               for t in model.reads(node))
    return known[node.name]


def extract(model: Model, names: set[str], sketch: bool = False) -> Model | None:
    """The nodes `names` of `model` as a model of their own (see the module docstring), in `model`'s order;
    None when a tensor on its border has no concrete shape in `model`, or a node holds a subgraph.
    `sketch`: the region is only rewritten and scored (`Model`'s `sketch`). The region's activations have the
    shapes they have in `model` (it computes them from the same inputs): none is inferred again."""
    index = _index(model)
    nodes = [model.node(name) for name in sorted((n for n in names if model.has_node(n)), key=index.nodes.get)]
    produced = {o for n in nodes for o in n.output if o}
    inputs, weights, outputs = {}, {}, []
    for node in nodes:
        if model.bodies(node):
            return None
        for tensor in node.input:
            if not tensor or tensor in produced:
                continue
            if model.is_constant(tensor):
                weights[tensor] = model.initializer(tensor)
            else:
                inputs[tensor] = None
    for node in nodes:
        outputs += [o for o in node.output
                    if o and (model.is_graph_output(o) or any(c.name not in names for c in model.consumers(o)))]
    info = model.tensor_info
    if any(t not in info for t in (*inputs, *outputs)):
        return None
    # Written straight into the model's graph: `onnx.helper.make_model` would copy the graph, weights and all.
    proto = onnx.ModelProto(ir_version=model.proto.ir_version, opset_import=model.proto.opset_import)
    graph = proto.graph
    graph.name = model.graph.name or "region"
    graph.node.extend(nodes)
    graph.input.extend(onnx.helper.make_tensor_value_info(t, info[t].elem_type, info[t].shape) for t in inputs)
    graph.output.extend(onnx.helper.make_tensor_value_info(t, info[t].elem_type, info[t].shape) for t in outputs)
    graph.initializer.extend(weights.values())
    graph.value_info.extend(vi for _, vi in sorted(index.value_info[t] for t in produced
                                                   if t in index.value_info and t not in outputs))
    known = {t: info[t] for t in (*inputs, *produced) if t in info}
    return Model(proto, sketch=sketch, tensor_info=known)


@dataclass(frozen=True)
class _Index:
    """Where each node and each value_info entry sits in a model's graph: a region takes its own in that order
    without walking the whole graph (a search cuts dozens of regions out of each model)."""

    nodes: dict[str, int]
    value_info: dict[str, tuple[int, onnx.ValueInfoProto]]


def _index(model: Model) -> _Index:
    found = _INDEX.get(model)
    if found is None:
        found = _INDEX[model] = _Index({n.name: i for i, n in enumerate(model.graph.node)},
                                       {vi.name: (i, vi) for i, vi in enumerate(model.graph.value_info)})
    return found


_INDEX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Index


def distances(model: Model, names: set[str], sources: set[str]) -> dict[str, int]:
    """Hops from the nearest of `sources` to each node of `names`, walking edges in either direction within
    `names` (a node with no path has no entry)."""
    found = {s: 0 for s in sources if s in names}
    frontier, hop = list(found), 0
    while frontier:
        hop += 1
        nearer = []
        for name in frontier:
            for a in adjacent(model, name):
                if a in names and a not in found:
                    found[a] = hop
                    nearer.append(a)
        frontier = nearer
    return found


def border(model: Model, names: set[str]) -> set[str]:
    """The nodes of `names` with a neighbour in `model` outside `names`: where an extract is cut."""
    return {n for n in names if adjacent(model, n) - names}
