"""Scoring a rewrite by its change: the kernels it removes and the kernels it adds.

The learned cost model is a fixed per-run overhead plus a sum over kernels,
and one kernel's prediction reads only that kernel: its nodes, the shapes of
the tensors they read and write, its weights' dims, and whether it touches a
graph input or output (`features.kernel_row`). Those make a kernel's
*signature*. A rewritten model's latency is then its parent's, minus the
kernels whose signature is gone, plus the kernels whose signature is new;
only the new ones are featurized and predicted. Fusion is the target's own
rule applied to the rewritten model (`kernels.group_kernels`), so a kernel
at the region's border whose fused chain or outside readers change gets a
new signature and is scored again.

    parent  (k1 k2 k3 k4)           latency P
    rewrite (k1 k2' k5 k4)          latency P - t(k2) - t(k3) + t(k2') + t(k5)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Model
from .features import kernel_row
from .kernels import Kernel, group_kernels
from .regressor import CostModel

Signature = tuple


def kernel_signature(model: Model, kernel: Kernel) -> Signature:
    """Everything `kernel_row` reads about `kernel` in `model`: equal signatures predict equal latencies."""
    info = model.tensor_info
    members = [model.node(name) for name in kernel.nodes]
    tensors = sorted({t for m in members for t in (*m.input, *m.output) if t} | set(kernel.weights))
    shapes = tuple((t, info[t].shape, info[t].elem_type) if t in info else (t, model.declared_shape(t))
                   for t in tensors)
    borders = (tuple(model.is_graph_input(t) for t in kernel.inputs),
               tuple(model.is_graph_output(t) for t in kernel.outputs))
    return kernel, tuple(m.SerializeToString(deterministic=True) for m in members), shapes, borders


def executed_kernels(model: Model, cost_model: CostModel) -> list[Kernel]:
    """The kernels the cost model scores (free ones, layout only, cost nothing)."""
    target = cost_model.target
    return [k for k in group_kernels(model, target.fusable_activations, target.grouped_activations) if k.kind != "free"]


@dataclass(frozen=True)
class KernelCosts:
    """A model's predicted latency and every kernel's share of it, by signature."""

    latency_s: float
    kernels: dict  # Signature -> (node names, predicted seconds)

    def nodes(self, signatures) -> frozenset[str]:
        return frozenset(name for s in signatures for name in self.kernels[s][0])


def kernel_costs(cost_model: CostModel, model: Model) -> KernelCosts:
    """The whole model scored: what every accepted model gets, and what its candidates' changes start from."""
    prediction = cost_model.predict(model)
    kernels = {kernel_signature(model, k.row.kernel): (k.row.kernel.nodes, k.latency_s) for k in prediction.kernels}
    return KernelCosts(prediction.latency_s, kernels)


@dataclass(frozen=True)
class Change:
    """A rewrite's predicted latency, and the nodes of the kernels it removed (parent's) and added (its own)."""

    latency_s: float
    removed: frozenset[str]
    added: frozenset[str]


def predict_change(cost_model: CostModel, parent: KernelCosts, rewritten: Model) -> Change:
    """`rewritten`'s predicted latency from its parent's kernel costs: only the new kernels are scored."""
    signatures = {kernel_signature(rewritten, k): k for k in executed_kernels(rewritten, cost_model)}
    new = [kernel for signature, kernel in signatures.items() if signature not in parent.kernels]
    gone = [signature for signature in parent.kernels if signature not in signatures]
    added_s = cost_model.predict_rows([kernel_row(rewritten, k, cost_model.target) for k in new])
    latency = parent.latency_s - sum(parent.kernels[s][1] for s in gone) + sum(added_s)
    return Change(latency, parent.nodes(gone), frozenset(name for k in new for name in k.nodes))


def changed_nodes(before: KernelCosts, after: KernelCosts) -> frozenset[str]:
    """Names of the nodes in kernels that differ between two scored models (either side's)."""
    return (before.nodes(s for s in before.kernels if s not in after.kernels)
            | after.nodes(s for s in after.kernels if s not in before.kernels))


def neighbourhood(model: Model, names) -> frozenset[str]:
    """`names` and the nodes one edge away in `model` (producers of what they read, readers of what they
    write): a kernel's fusion and outside readers are decided there."""
    found = set(names)
    for name in names:
        if not model.has_node(name):
            continue
        node = model.node(name)
        found.update(p.name for t in model.reads(node) if (p := model.producer(t)) is not None)
        found.update(c.name for t in node.output if t for c in model.consumers(t))
    return frozenset(found)
