"""Small onnx-graphsurgeon helpers shared by the rewrites.

They only ever attach *new* constants: graphsurgeon's imported constants share
their arrays with the source model, so editing `.values` in place would
silently change the input model too.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def nodes_by_name(graph: gs.Graph) -> dict[str, gs.Node]:
    return {n.name: n for n in graph.nodes}


def fresh_name(graph: gs.Graph, base: str) -> str:
    """A tensor/node name not yet used in `graph`, derived from `base`."""
    # What `graph.tensors()` names, without its per-tensor bookkeeping: this runs once per new constant.
    taken = {t.name for t in graph.inputs} | {n.name for n in graph.nodes}
    taken.update(t.name for n in graph.nodes for t in (*n.inputs, *n.outputs))
    return unique_name(base, taken)


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or the first of `base_1`, `base_2`... not in `taken`."""
    if base not in taken:
        return base
    index = 1
    while f"{base}_{index}" in taken:
        index += 1
    return f"{base}_{index}"


def constant_input(node: gs.Node, index: int) -> np.ndarray | None:
    """The value of input `index` when it is a constant, else None."""
    if index >= len(node.inputs):
        return None
    tensor = node.inputs[index]
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def set_constant_input(graph: gs.Graph, node: gs.Node, index: int, value: np.ndarray, suffix: str) -> None:
    """Point input `index` of `node` at a new constant (appending the input if missing)."""
    const = gs.Constant(fresh_name(graph, f"{node.name}.{suffix}"), np.ascontiguousarray(value))
    if index < len(node.inputs):
        node.inputs[index] = const
    else:
        while len(node.inputs) < index:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(const)
