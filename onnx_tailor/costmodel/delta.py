"""Scoring a rewrite by its change: the kernels it removes and the kernels it adds.

The learned cost model is a fixed per-run overhead plus a sum over kernels,
and one kernel's prediction reads only that kernel: its nodes, the shapes of
the tensors they read and write, its weights' dims, and whether it touches a
graph input or output (`features.kernel_row`). Those make a kernel's
*signature*. A rewritten model's latency is then its parent's, minus the
kernels whose signature is gone, plus the kernels whose signature is new;
only the new ones are featurized and predicted. Fusion is the target's own
rule applied to the rewritten model (`kernels.kernels_for`), so a kernel
at the region's border whose fused chain or outside readers change gets a
new signature and is scored again.

    parent  (k1 k2 k3 k4)           latency P
    rewrite (k1 k2' k5 k4)          latency P - t(k2) - t(k3) + t(k2') + t(k5)

The rewritten model need not exist whole: `predict_region_change` reads the
rewrite of a region cut out of the parent (`ir.regions`). The kernels that
can differ are those holding a node the rewrite edited or whose tensors
changed shape, or a neighbour of one, closed over both sides' kernels; when
all of them lie far enough inside the region that their grouping cannot see
the cut, the region's kernels are the whole model's, and only the question
"is this a real graph input/output" is asked of the parent.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import cached_property

from ..ir import Model
from ..ir.regions import adjacent, border, distances, grow
from .features import KernelRow, kernel_row
from .kernels import ANCHORS, Kernel, kernel_members, kernels_for, make_kernel
from .regressor import CostModel

Signature = tuple
# How many edges past its own nodes a kernel's grouping looks (a reader's reader: the Mul that closes a gate,
# the scale that closes HardSwish): a region's kernels closer than this to its cut are not trusted.
MARGIN = 2


def kernel_signature(model: Model, kernel: Kernel, borders: Model | None = None) -> Signature:
    """Everything `kernel_row` reads about `kernel` in `model`: equal signatures predict equal latencies.
    `borders`: the model whose graph inputs and outputs count, when `model` is a region cut out of it."""
    info, borders = model.tensor_info, borders or model
    members = [model.node(name) for name in kernel.nodes]
    tensors = sorted({t for m in members for t in (*m.input, *m.output) if t} | set(kernel.weights))
    shapes = tuple((t, info[t].shape, info[t].elem_type) if t in info else (t, model.declared_shape(t))
                   for t in tensors)
    flags = (tuple(borders.is_graph_input(t) for t in kernel.inputs),
             tuple(borders.is_graph_output(t) for t in kernel.outputs))
    return kernel, tuple(m.SerializeToString(deterministic=True) for m in members), shapes, flags


def executed_kernels(model: Model, cost_model: CostModel) -> list[Kernel]:
    """The kernels the cost model scores (free ones, layout only, cost nothing)."""
    target = cost_model.target
    return [k for k in kernels_for(model, target) if k.kind != "free"]


@dataclass(frozen=True)
class KernelCosts:
    """A model's predicted latency and every kernel's share of it, by signature."""

    latency_s: float
    kernels: dict  # Signature -> (node names, predicted seconds)

    def nodes(self, signatures) -> frozenset[str]:
        return frozenset(name for s in signatures for name in self.kernels[s][0])

    @cached_property
    def owners(self) -> dict[str, Signature]:
        """Node name -> the signature of the executed kernel it belongs to."""
        return {name: s for s, (names, _) in self.kernels.items() for name in names}

    @cached_property
    def order(self) -> dict[Signature, int]:
        """Signature -> its kernel's place in the model: a change sums what it removes in this order."""
        return {s: i for i, s in enumerate(self.kernels)}


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


@dataclass(frozen=True)
class Unscored:
    """A change whose new kernels are still to be predicted (`score`): one regressor call costs far more than
    one row, so the search predicts every change of a model's candidates at once."""

    kept_s: float  # the parent's latency less the kernels the rewrite removed
    removed: frozenset[str]
    added: frozenset[str]
    rows: tuple[KernelRow, ...]  # the new kernels, in the rewritten model's order


def score(cost_model: CostModel, changes: list[Unscored]) -> list[Change]:
    """Each change's predicted latency: its new kernels predicted together with every other change's."""
    times = cost_model.predict_rows([row for change in changes for row in change.rows])
    scored, start = [], 0
    for change in changes:
        added_s = times[start:start + len(change.rows)]
        start += len(change.rows)
        scored.append(Change(change.kept_s + sum(added_s), change.removed, change.added))
    return scored


def predict_change(cost_model: CostModel, parent: KernelCosts, rewritten: Model) -> Change:
    """`rewritten`'s predicted latency from its parent's kernel costs: only the new kernels are scored."""
    return score(cost_model, [unscored_change(cost_model, parent, rewritten)])[0]


def unscored_change(cost_model: CostModel, parent: KernelCosts, rewritten: Model) -> Unscored:
    """`predict_change` short of predicting the new kernels."""
    signatures = {kernel_signature(rewritten, k): k for k in executed_kernels(rewritten, cost_model)}
    new = {signature: kernel for signature, kernel in signatures.items() if signature not in parent.kernels}
    gone = [signature for signature in parent.kernels if signature not in signatures]
    return _unscored(cost_model, parent, rewritten, gone, new, rewritten)


def _unscored(cost_model: CostModel, parent: KernelCosts, rewritten: Model, gone: list, new: dict,
              borders: Model, rows: dict | None = None) -> Unscored:
    """The change that removes the parent's kernels `gone` and adds `new` (signature -> kernel). `rows`: rows
    described so far, by signature, which is everything a row reads (`kernel_signature`)."""
    kept = parent.latency_s - sum(parent.kernels[s][1] for s in gone)
    rows = {} if rows is None else rows
    for signature, kernel in new.items():
        if signature not in rows:
            rows[signature] = kernel_row(rewritten, kernel, cost_model.target, borders)
    return Unscored(kept, parent.nodes(gone), frozenset(name for k in new.values() for name in k.nodes),
                    tuple(rows[signature] for signature in new))


def region_around(model: Model, parent: KernelCosts, names, hops: int) -> set[str]:
    """The nodes a region preview of a rewrite of `names` cuts out: their kernels, then `hops` times the
    neighbours and their kernels (a rewrite's reach counts in kernels, a fused chain being one), then
    `MARGIN` more edges for the cut (`ir.regions.grow`)."""
    region = set(names)
    for step in range(hops + 1):
        if step:
            region |= {a for n in region if model.has_node(n) for a in adjacent(model, n)}
        region |= parent.nodes({parent.owners[n] for n in region if n in parent.owners})
    return grow(model, region, MARGIN)


def predict_region_change(cost_model: CostModel, parent: KernelCosts, model: Model, region: Model,
                          rewritten: Model) -> Change | None:
    """`predict_change` for the rewrite `rewritten` of `region`, a region of `model` (`ir.regions.extract`)
    whose kernels are `parent`: the same answer, or None when the region cannot tell (the rewrite changed a
    tensor on its border, a shape changed where nothing explains it, a changed kernel reaches its cut)."""
    change = unscored_region_change(cost_model, parent, model, region, rewritten)
    return None if change is None else score(cost_model, [change])[0]


def unscored_region_change(cost_model: CostModel, parent: KernelCosts, model: Model, region: Model,
                           rewritten: Model, rows: dict | None = None) -> Unscored | None:
    """`predict_region_change` short of predicting the new kernels. `rows`: the new kernels' rows described so
    far, by signature, for `cost_model`'s target (candidates of one model add many of the same kernels)."""
    touched = _touched(model, region, rewritten)
    if touched is None:
        return None
    target = cost_model.target
    layout = _layout(model, region, target)
    wired_alike = _wired_alike(region, rewritten) and _readers(rewritten) == layout.readers
    if wired_alike:  # the region's grouping holds, listed by where each kernel starts, as kernel_members lists it
        position = {node.name: i for i, node in enumerate(rewritten.graph.node)}
        groups = sorted(layout.groups, key=lambda names: position[names[0]])
    else:  # grouped whole (a node's kernel depends on what earlier ones claimed), described only where it matters
        groups = [tuple(m.name for m in members)
                  for members in kernel_members(rewritten, target.fusable_activations, target.grouped_activations)]
    owner = {name: names for names in groups for name in names}
    involved = set(touched)
    while True:  # close over kernels on both sides: a kernel that differs may span nodes nothing touched
        grown = involved | {m for n in involved if n in owner for m in owner[n]}
        grown |= parent.nodes({parent.owners[n] for n in involved if n in parent.owners})
        if grown == involved:
            break
        involved = grown
    inside, cut = {n.name for n in rewritten.graph.node}, layout.cut
    if involved - inside - layout.nodes or involved & cut:
        return None  # a kernel reaching out of the region, or the cut itself changed
    near = layout.near if wired_alike else distances(rewritten, inside, cut & inside)
    if any(near.get(name, MARGIN) < MARGIN for name in involved & inside):
        return None
    # In the orders the whole model's change sums them, so that equal changes predict bit-equal latencies.
    kernels = (make_kernel(rewritten, [rewritten.node(name) for name in names]) for names in groups
               if involved.intersection(names))
    signatures = {kernel_signature(rewritten, k, model): k for k in kernels if k.kind != "free"}
    new = {signature: kernel for signature, kernel in signatures.items() if signature not in parent.kernels}
    before = {parent.owners[n] for n in involved if n in parent.owners}
    gone = sorted((signature for signature in before if signature not in signatures), key=parent.order.__getitem__)
    return _unscored(cost_model, parent, rewritten, gone, new, model, rows)


class _Layout:
    """A region's nodes, border with its model, each node's distance from that border, and grouping into
    kernels: the same for every rewrite of it that keeps its wiring (`_wired_alike`) and the order of each
    activation's readers, as most of a search's rewrites of a region's sites do. Each worked out when first
    asked."""

    def __init__(self, model: Model, region: Model, activations: tuple):
        # Weakly: `_LAYOUTS` keeps a layout as long as its region lives, not the other way round.
        self._model, self._region = weakref.ref(model), weakref.ref(region)
        self._activations = activations  # the target's fusable and grouped ones, as kernel_members takes them

    @cached_property
    def nodes(self) -> frozenset[str]:
        return frozenset(n.name for n in self._region().graph.node)

    @cached_property
    def cut(self) -> frozenset[str]:
        return frozenset(border(self._model(), self.nodes))

    @cached_property
    def near(self) -> dict[str, int]:
        return distances(self._region(), self.nodes, self.cut & self.nodes)

    @cached_property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        """kernel_members' nodes, by name."""
        return tuple(tuple(m.name for m in members) for members in kernel_members(self._region(), *self._activations))

    @cached_property
    def readers(self) -> dict[str, tuple[str, ...]]:
        return _readers(self._region())


def _layout(model: Model, region: Model, target) -> _Layout:
    """`region`'s `_Layout` (a region of `model`) on `target`, one per region and target."""
    key = (target.fusable_activations, target.grouped_activations)
    known = _LAYOUTS.setdefault(region, {})
    if key not in known:
        known[key] = _Layout(model, region, key)
    return known[key]


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # region -> target activations -> _Layout


def _readers(model: Model) -> dict[str, tuple[str, ...]]:
    """Each activation's readers (of the graph's inputs and of what its nodes write), in the model's order."""
    return {t: tuple(r.name for r in model.consumers(t))
            for t in (*(i.name for i in model.graph_inputs), *(o for n in model.graph.node for o in n.output if o))}


def _wired_alike(region: Model, rewritten: Model) -> bool:
    """Whether `rewritten` has `region`'s nodes, each reading and writing the same activations: a rewrite that
    gave nodes new weights or a conv new attributes (a channel edit, a densified depthwise conv), in whatever
    order. The region's grouping into kernels and its distances then hold for the rewrite: distances walk
    activations only, and grouping (`kernels.kernel_members`) reads which nodes read which activations, op types,
    graph outputs, which inputs are constants, the values of one-element constants (an activation's bounds and
    scales) and the attributes of nodes other than convs and matrix products (Clip's bounds); never a constant of
    several elements nor a shape. The order of the nodes does not matter as long as each activation's readers
    keep theirs (the caller checks it, `_readers`): a kernel's other nodes are downstream of its first, or read
    what it reads after it, so a node can only be claimed by a node that comes first in both orders."""
    if (len(rewritten.graph.node) != len(region.graph.node)
            or rewritten.graph_output_names != region.graph_output_names):
        return False
    for node in rewritten.graph.node:
        if not region.has_node(node.name):
            return False
        old = region.node(node.name)
        if node == old:
            continue
        if (node.op_type != old.op_type or node.output != old.output or len(node.input) != len(old.input)
                or (node.op_type not in ANCHORS and node.attribute != old.attribute)):
            return False
        if any(a != b and not (_many_valued(region, a) and _many_valued(rewritten, b))
               for a, b in zip(old.input, node.input)):
            return False
    return all(w == region.initializer(w.name) for w in rewritten.graph.initializer
               if math.prod(w.dims) <= 1 and region.is_constant(w.name))


def _many_valued(model: Model, tensor: str) -> bool:
    weight = model.initializer(tensor)
    return weight is not None and math.prod(weight.dims) > 1


def _touched(model: Model, region: Model, rewritten: Model) -> frozenset[str] | None:
    """Nodes the rewrite of `region` edited, added or removed, those reading or writing a tensor whose shape
    changed, and their neighbours; None when a border tensor changed or a shape changed unexplained."""
    info, after = model.tensor_info, rewritten.tensor_info
    ends = [*region.graph_inputs, *region.graph.output]
    if ({v.name for v in rewritten.graph_inputs} != {v.name for v in region.graph_inputs}
            or {v.name for v in rewritten.graph.output} != {v.name for v in region.graph.output}
            or any(after.get(v.name) != info.get(v.name) for v in ends)):
        return None
    before = {n.name: n for n in region.graph.node}
    edited = {n.name for n in rewritten.graph.node if before.get(n.name) != n}
    edited |= before.keys() - {n.name for n in rewritten.graph.node}
    reshaped = {w.name for w in rewritten.graph.initializer
                if region.declared_shape(w.name) not in (None, tuple(w.dims))}
    for node in rewritten.graph.node:
        outputs = [t for t in node.output if t]
        if any(t not in after for t in outputs):
            return None  # a shape the region cannot know: the whole model's inference may
        changed = [t for t in outputs if after[t] != info.get(t)]
        if changed and node.name not in edited and not reshaped.intersection(node.input) \
                and not any(after.get(t) != info.get(t) for t in node.input if t):
            return None  # a shape changed downstream of nothing that changed: the region misleads inference
        reshaped.update(changed)
    for node in rewritten.graph.node:
        if any(t in reshaped for t in (*node.input, *node.output)):
            edited.add(node.name)
    return neighbourhood(model, edited) | neighbourhood(rewritten, edited)


def changed_nodes(before: KernelCosts, after: KernelCosts) -> frozenset[str]:
    """Names of the nodes in kernels that differ between two scored models (either side's)."""
    return (before.nodes(s for s in before.kernels if s not in after.kernels)
            | after.nodes(s for s in after.kernels if s not in before.kernels))


def neighbourhood(model: Model, names) -> frozenset[str]:
    """`names` and the nodes one edge away in `model` (producers of what they read, readers of what they
    write): a kernel's fusion and outside readers are decided there."""
    found = set(names)
    for name in names:
        if model.has_node(name):  # a name of the other model (removed, or added by the rewrite)
            found |= adjacent(model, name)
    return frozenset(found)
