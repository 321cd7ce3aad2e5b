"""How large a value each integer input of a model may take: the rows of the smallest table it indexes.

Seeded random inputs feed integers, and an integer input is usually an index:
a BERT `token_type_ids` looks up a 2-row table, `input_ids` a vocabulary of
thousands. An index past a table's end makes onnxruntime fail, so random
integers must stay below the smallest table each input reaches.

From every integer graph input the walk follows the ops that hand index
values on unchanged (casts, reshapes, transposes, slices and the like) to
the ops that index with them:
- Gather / GatherElements: the length of the data along `axis`;
- OneHot: its depth, when constant.
The table's length comes from the data's declared shape (an initializer,
usually). Nothing is run: this is read from the graph alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:  # annotations only: model imports shapes, which imports runtime, which imports this
    from .model import Model

# Ops whose output holds (some of) the values of their first input, unchanged.
_PASS_VALUES = frozenset({"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Expand",
                          "Tile", "Slice", "Concat", "Split", "Gather"})
_INTEGER_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
                            onnx.TensorProto.INT64, onnx.TensorProto.UINT8, onnx.TensorProto.UINT16,
                            onnx.TensorProto.UINT32, onnx.TensorProto.UINT64})


def index_limits(model: Model) -> dict[str, int]:
    """For every integer graph input that indexes a table, the rows of the smallest such table.

    Inputs absent from the result index nothing the walk can see (a mask, a length, a
    sample rate); their values are up to the caller.
    """
    limits = {}
    for vi in model.graph_inputs:
        if vi.type.tensor_type.elem_type not in _INTEGER_TYPES:
            continue
        found = _tables_reached(model, vi.name)
        if found:
            limits[vi.name] = min(found)
    return limits


def _tables_reached(model: Model, start: str) -> list[int]:
    """The lengths of the tables that the values of `start` index, following value-preserving ops."""
    lengths, seen, pending = [], {start}, [start]
    while pending:
        tensor = pending.pop()
        for node in model.consumers(tensor):
            length = _indexed_length(model, node, tensor)
            if length is not None:
                lengths.append(length)
            elif node.op_type in _PASS_VALUES and node.input[0] == tensor:
                fresh = [out for out in node.output if out and out not in seen]
                seen.update(fresh)
                pending.extend(fresh)
    return lengths


def _indexed_length(model: Model, node: onnx.NodeProto, tensor: str) -> int | None:
    """How many entries `node` can index with `tensor`, when it indexes with it and the length is known."""
    if node.op_type in ("Gather", "GatherElements") and len(node.input) > 1 and node.input[1] == tensor:
        shape = model.declared_shape(node.input[0])
        axis = model.attr(node, "axis", 0)
        if shape and -len(shape) <= axis < len(shape) and isinstance(shape[axis], int) and shape[axis] > 0:
            return shape[axis]
    if node.op_type == "OneHot" and node.input[0] == tensor:
        depth = model.constant(node.input[1])
        if depth is not None and depth.size == 1 and int(depth.reshape(-1)[0]) > 0:
            return int(depth.reshape(-1)[0])
    return None
