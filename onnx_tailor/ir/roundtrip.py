"""The onnx-graphsurgeon round trip of a rewrite, at the cost of what the rewrite changed.

A rewrite imports a model into graphsurgeon, edits a few nodes, then sorts and
exports the whole graph again (`Model.from_graphsurgeon`). On a region preview
of two dozen nodes that round trip was a third of the preview: graphsurgeon's
topological sort walks every node recursively, and its export rebuilds every
node's proto attribute by attribute. Two shortcuts, each giving exactly what
graphsurgeon gives:

- `toposort`: graphsurgeon's order (a stable sort by each node's depth: one
  more than its deepest producer's) computed in one pass when the nodes
  already come after their producers; graphsurgeon's own sort otherwise.
- `export`: a sketch's graph (`Model`'s `sketch`) as a proto in which every
  node the rewrite left as imported (same op, name, domain, tensors read and
  written, attributes) is its imported proto, which graphsurgeon's export of
  it equals; the others are exported by graphsurgeon. It writes no
  value_info: `from_graphsurgeon` drops and infers it again anyway.

    import (record each node's proto)  ->  rewrite  ->  toposort  ->  export
                                                                      node untouched: its proto
                                                                      node edited or new: graphsurgeon's export
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import SparseValues

# Where an imported graph keeps its nodes' protos: an attribute of the graph, so that a rewrite's copy of the
# graph (or a graph built anew) simply has none, and every node of it is exported by graphsurgeon.
_IMPORTED = "_tailor_imported"
# Attribute values whose equality says the exported attribute is the same (a list is compared as a tuple, so an
# edit in place of the node's own list is seen). Anything else (a tensor, a graph, a numpy value) is exported.
_PLAIN = frozenset({int, float, str, bytes, bool})
# What graphsurgeon writes of a node and of a plain attribute.
_NODE_FIELDS = frozenset({"input", "output", "name", "op_type", "domain", "attribute"})
_ATTRIBUTE_FIELDS = frozenset({"name", "type", "f", "i", "s", "floats", "ints", "strings"})


def import_recorded(proto: onnx.ModelProto) -> gs.Graph:
    """`gs.import_onnx(proto)`, with each node's proto and what it was at import kept for `export`."""
    graph = gs.import_onnx(proto)
    if not graph.functions:
        # Nodes are imported in the proto's order, one per NodeProto.
        record = {id(node): (node, onnx_node, key) for node, onnx_node in zip(graph.nodes, proto.graph.node)
                  if _exported_alike(onnx_node) and (key := _key(node)) is not None}
        object.__setattr__(graph, _IMPORTED, record)
    return graph


def _exported_alike(onnx_node: onnx.NodeProto) -> bool:
    """Whether graphsurgeon's export of the node it imports from `onnx_node` gives `onnx_node` back: it keeps
    no doc_string, metadata or attribute reference (given plain attribute values, `_key`)."""
    return (all(field.name in _NODE_FIELDS for field, _ in onnx_node.ListFields())
            and all(field.name in _ATTRIBUTE_FIELDS for a in onnx_node.attribute for field, _ in a.ListFields()))


def _key(node: gs.Node) -> tuple | None:
    """Everything graphsurgeon's export of `node` reads, or None when that cannot be told by equality. Types
    count: a rewrite that writes 1.0 where 1 was changes the attribute's type."""
    attrs = []
    for name, value in node.attrs.items():
        kind = type(value)
        if kind is list or kind is tuple:
            kinds = tuple(map(type, value))
            if not _PLAIN.issuperset(kinds):
                return None
            attrs.append((name, kind, kinds, tuple(value)))
        elif kind in _PLAIN:
            attrs.append((name, kind, value))
        else:
            return None
    return (node.op, node.name, node.domain, tuple([t.name for t in node.inputs]),
            tuple([t.name for t in node.outputs]), tuple(attrs))


def toposort(graph: gs.Graph) -> gs.Graph:
    """`graph.toposort()`'s order, in one pass when every node already comes after its producers."""
    nodes = graph.nodes
    if graph.functions or any(isinstance(v, gs.Graph) for node in nodes for v in node.attrs.values()):
        return graph.toposort()
    levels: dict[int, int] = {}
    for node in nodes:
        deepest = -1
        for tensor in node.inputs:
            if not tensor.name:  # an omitted optional input: graphsurgeon counts no producer of it
                continue
            for producer in tensor.inputs:
                level = levels.get(id(producer))
                if level is None:  # a producer later in the list (or outside it): graphsurgeon sorts
                    return graph.toposort()
                deepest = max(deepest, level)
        if id(node) in levels:  # a node listed twice: graphsurgeon's sort keeps it once
            return graph.toposort()
        levels[id(node)] = deepest + 1
    order = [levels[id(node)] for node in nodes]
    if any(a > b for a, b in zip(order, order[1:])):
        # graphsurgeon's sort is Python's stable sort by level.
        graph.nodes = [node for _, node in sorted(zip(order, nodes), key=lambda pair: pair[0])]
    return graph


def export(graph: gs.Graph) -> onnx.ModelProto:
    """`gs.export_onnx(graph, do_type_check=False)` without value_info, reusing the protos of the nodes left
    as `import_recorded` imported them. The caller sets the opset, IR version and producer."""
    record = graph.__dict__.get(_IMPORTED)
    constants = [] if record is None else [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    if record is None or graph.functions or any(isinstance(t._values, SparseValues) for t in constants):
        proto = gs.export_onnx(graph, do_type_check=False)
        del proto.graph.value_info[:]
        return proto
    nodes = []
    for node in graph.nodes:
        known = record.get(id(node))
        if known is not None and known[0] is node and _key(node) == known[2]:
            nodes.append(known[1])
        else:
            nodes.append(OnnxExporter.export_node(node))
    onnx_graph = onnx.helper.make_graph(
        nodes, graph.name,
        [OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs],
        [OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs],
        initializer=[OnnxExporter.export_tensor_proto(t) for t in constants],
        doc_string=graph.doc_string)
    return onnx.helper.make_model(onnx_graph)
