"""Cone digests: a name for what a tensor's value depends on, so that equal values are known equal.

A tensor's value on given inputs is a function of its cone: the nodes and
constants it is computed from, back to the graph inputs. The digest of a
tensor hashes exactly that (each node's op, domain, attributes and the
digests of what it reads, in order; each constant's bytes; each graph input's
name and type; the model's opsets) and nothing else: node names, tensor
names, and every node outside the cone leave it unchanged. Two models, or one
model before and after a rewrite elsewhere, give a tensor the same digest only
when onnxruntime computes it the same way, which is what lets calibration
tensors be reused across the models of a search (`passes.tensor_cache`): a
rewrite changes the digests of exactly the tensors downstream of what it
changed.

A subgraph body refers to the outer tensors it reads by name, so those reads
are hashed with their names as well as their digests.
"""

from __future__ import annotations

import hashlib

import onnx

from .model import Model
from .subgraphs import subgraphs


def cone_digests(model: Model) -> dict[str, str]:
    """Every tensor of `model`'s main graph (inputs, constants, node outputs) -> its cone digest."""
    opsets = sorted((o.domain, o.version) for o in model.proto.opset_import)
    seed = repr(opsets).encode()
    digests: dict[str, str] = {}
    for tensor in model.graph.initializer:
        digests[tensor.name] = _hash(seed, b"constant", _constant_bytes(tensor))
    shapes = model.input_shapes
    for vi in model.graph_inputs:
        digests[vi.name] = _hash(seed, b"input", vi.name.encode(), vi.type.SerializeToString(deterministic=True),
                                 repr(shapes.get(vi.name)).encode())
    for node in _topological(model):
        parts = [seed, node.op_type.encode(), node.domain.encode()]
        parts += [a.SerializeToString(deterministic=True) for a in node.attribute]
        parts += [digests.get(name, "?" + name).encode() if name else b"-" for name in node.input]
        if subgraphs(node):  # outer reads by name: the body refers to them so
            parts += [f"{name}={digests.get(name, '?')}".encode() for name in model.reads(node)[len(node.input):]]
        node_digest = _hash(*parts)
        for index, output in enumerate(node.output):
            if output:
                digests[output] = _hash(node_digest.encode(), str(index).encode())
    return digests


def _hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:  # length-prefixed, so that no two lists of parts run together alike
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _constant_bytes(tensor: onnx.TensorProto) -> bytes:
    """A constant's type, shape and contents, without its name (renaming a weight changes no value)."""
    if tensor.HasField("raw_data"):  # the usual case: no copy of the weights
        return b"".join([repr((tensor.data_type, list(tensor.dims))).encode(), tensor.raw_data])
    unnamed = onnx.TensorProto()
    unnamed.CopyFrom(tensor)  # the model's own proto is shared and never edited
    unnamed.ClearField("name")
    return unnamed.SerializeToString(deterministic=True)


def _topological(model: Model):
    """The nodes, each after the producers of what it reads (a canonical graph already is; this does not rely on it)."""
    done: set[str] = {t.name for t in model.graph.initializer} | {vi.name for vi in model.graph_inputs} | {""}
    pending = list(model.graph.node)
    while pending:
        waiting = []
        for node in pending:
            if all(name in done or model.producer(name) is None for name in model.reads(node)):
                yield node
                done.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):  # a cycle cannot run anyway; hash what is left in file order
            yield from waiting
            return
        pending = waiting
