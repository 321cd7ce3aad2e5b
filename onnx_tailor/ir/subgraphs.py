"""Subgraphs of control-flow nodes (If, Loop, Scan): what they read from outside, and each as a model of its own.

A subgraph may read any tensor of the graphs around it by name, without
listing it among its node's inputs (an outer-scope reference). Whoever asks
"who reads this tensor?" must count the node that owns such a subgraph as a
reader, or a rewrite changes a tensor behind the subgraph's back.

To cost or analyse the nodes inside a subgraph, it is lifted into a
standalone proto: its formal inputs and the outer tensors it reads become
graph inputs with the shapes the caller knows, and the outer constants it
reads become initializers (`Model.bodies` then lifts its `Constant` nodes
and names its nodes as the canonical form of the main graph has them).

This module walks protos and imports nothing of `ir`, so that every
clean-up and model helper can walk subgraphs through it.
"""

from __future__ import annotations

import onnx
from onnx import helper

TypedShape = tuple[tuple[int, ...] | None, int]  # (concrete shape or None when unknown, element type)


def subgraphs(node: onnx.NodeProto) -> list[tuple[str, onnx.GraphProto]]:
    """(attribute name, graph) of every subgraph `node` owns: If's branches, Loop's and Scan's body."""
    found = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            found.append((attribute.name, attribute.g))
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            found.extend((f"{attribute.name}[{i}]", g) for i, g in enumerate(attribute.graphs))
    return found


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Tensors `graph` (or a subgraph nested in it) reads that none of its own inputs, initializers or nodes define."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {o for n in graph.node for o in n.output if o}
    read = set()
    for node in graph.node:
        read.update(i for i in node.input if i)
        for _, sub in subgraphs(node):
            read |= outer_reads(sub)
    return read - defined


def implicit_reads(node: onnx.NodeProto) -> list[str]:
    """The outer tensors `node`'s subgraphs read, in a stable order (empty for ordinary nodes)."""
    names = set()
    for _, sub in subgraphs(node):
        names |= outer_reads(sub)
    return sorted(names)


def standalone_body(graph: onnx.GraphProto, formal: list[TypedShape], outer: dict[str, TypedShape],
                    outer_constants: dict[str, onnx.TensorProto], like: onnx.ModelProto) -> onnx.ModelProto:
    """`graph` as a model of its own, with the opsets and IR version of `like`.

    `formal` types the subgraph's own inputs in order (Loop's iteration number,
    condition and carried values; Scan's states and slices); `outer` types the
    outer activations it reads (any it lacks are typed as float of unknown shape),
    `outer_constants` holds the outer constants it reads.
    """
    def value_info(name: str, typed: TypedShape) -> onnx.ValueInfoProto:
        shape, elem_type = typed
        return helper.make_tensor_value_info(name, elem_type, list(shape) if shape is not None else None)

    inputs = [value_info(vi.name, typed) for vi, typed in zip(graph.input, formal)]
    reads = outer_reads(graph)
    unknown = (None, onnx.TensorProto.FLOAT)  # an outer tensor nobody could type: still an input, untyped
    inputs += [value_info(name, outer.get(name, unknown)) for name in sorted(reads) if name not in outer_constants]
    initializers = [*graph.initializer, *(outer_constants[name] for name in sorted(reads) if name in outer_constants)]
    body = helper.make_graph(list(graph.node), graph.name or "body", inputs, list(graph.output), initializers)
    proto = helper.make_model(body, opset_imports=list(like.opset_import))
    proto.ir_version = like.ir_version
    return proto
