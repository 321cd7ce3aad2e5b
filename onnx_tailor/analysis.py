"""What a model costs and how it is built: MACs, parameters, activation memory, expand-depthwise pairs, IBN blocks.

Everything here reads a canonical `Model` and never changes it. Sizes are
for the model's concrete `input_shapes` (batch 1 unless the user says
otherwise). Peak activation memory is a liveness sweep over the graph's
topological order: while a node runs, its inputs and outputs are live, and a
tensor dies after its last reader (graph outputs live to the end). Weights
are not activations and are counted as parameters instead.

Quantized ops count the MACs of their float form (ConvInteger and QLinearConv
as a Conv, MatMulInteger and QLinearMatMul as a MatMul; a QDQ-wrapped Conv is
a Conv), and their int8 weights count as parameters at one byte each.
LSTM/GRU/RNN count their gate MatMuls once per time step. If counts its
costlier branch, Loop its body times a constant trip count (once, with a
warning, when the count is only known at run time), Scan its body once per
slice; the nodes inside subgraphs are counted like any other, each subgraph
analysed as a model of its own (`Model.bodies`).

Structure is found whatever spelling the exporter chose for the activations.
An activation is any run of element-wise ops with constant operands that
nothing outside it reads (HardSwish as x * Clip(x + 3, 0, 6) / 6, swish as
x * Sigmoid(x), GELU's erf form, a scale or shift BatchNorm folding left):
`match_activation_chain`, which the simulator's fusion rule uses too. Then
    expand-depthwise pair:  x -> Conv 1x1 (expand) -> act -> depthwise Conv KxK
    inverted-bottleneck (IBN) block: a pair -> act
      -> [squeeze-excitation: GlobalAveragePool -> ... -> gate, Mul] -> Conv 1x1 (project) -> [Add x]
A pair's intermediate tensors have no reader outside it; LCNet-style
networks (PP-OCR's recognizer) chain dw -> pw -> dw -> pw, and each pw -> dw
is a pair.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import onnx

from .ir import Model
from .ir.shapes import itemsize
from .ir.subgraphs import subgraphs

# -- activations ------------------------------------------------------------------------

_SIMPLE_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "HardSwish": "hardswish", "HardSigmoid": "hardsigmoid",
                       "LeakyRelu": "leakyrelu", "Tanh": "tanh", "Elu": "elu", "Gelu": "gelu", "PRelu": "prelu"}
# Ops that compute each output element from the same element of their inputs: an activation is
# made of them, with constant operands (bounds, slopes, scales) besides the tensor it activates.
ELEMENTWISE_MATH = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu",
                    "PRelu", "Tanh", "Elu", "Selu", "Softplus", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Pow", "Neg",
                    "Abs", "Max", "Min", "Reciprocal"}
AFFINE = {"Add", "Sub", "Mul", "Div"}  # by a constant: a scale or shift
# Single-input steps a decomposed hard gate (HardSigmoid of x) is spelled with.
_HARD_GATE_STEPS = {"Add", "Sub", "Clip", "Div", "Mul", "HardSigmoid", "Relu", "Max", "Min"}
_GELU_STEPS = {"Erf", "Tanh", "Add", "Sub", "Mul", "Div", "Pow"}  # x (1 + erf(x / sqrt 2)) / 2, or its tanh form
_LARGEST_SPELLING = 12  # nodes; GELU's tanh form, the longest known, has 8


@dataclass(frozen=True)
class Activation:
    kind: str  # relu, relu6, hardswish, swish, gelu, affine (scale/shift), ...; a chain joins them: affine+hardswish
    nodes: tuple[str, ...]  # in topological order
    output: str  # the tensor the activation produces


def _scalar(model: Model, tensor: str) -> float | None:
    proto = model.initializer(tensor)  # its dims first: a weight is not decoded to learn it is no scalar
    if proto is None or math.prod(proto.dims) != 1:
        return None
    return float(model.constant(tensor).reshape(()))


def _clip_bounds(model: Model, node: onnx.NodeProto) -> tuple[float | None, float | None]:
    if len(node.input) > 1:  # opset >= 11: bounds are inputs
        low = _scalar(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None
        high = _scalar(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return low, high
    return model.attr(node, "min"), model.attr(node, "max")


def match_activation(model: Model, tensor: str) -> Activation | None:
    """The activation applied to `tensor` if every reader of `tensor` belongs to it: the smallest group of
    element-wise nodes with constant operands that reads `tensor` and hands on one tensor (x * gate(x), GELU's
    x * (1 + erf(x / sqrt 2)) / 2, a scale or shift, or one activation op)."""
    if model.is_graph_output(tensor) or not model.consumers(tensor):
        return None
    nodes = _closed_group(model, tensor)
    if nodes is None:
        return None
    if len(nodes) == 1:
        return Activation(_single_kind(model, nodes[0]), (nodes[0].name,), nodes[0].output[0])
    ops = {n.op_type for n in nodes}
    output = nodes[-1].output[0]
    gated = any(n.op_type == "Mul" and not any(model.is_constant(i) for i in n.input) for n in nodes)  # x * f(x)
    if gated and "Sigmoid" in ops and ops <= {"Sigmoid", "Mul"}:
        kind = "swish"
    elif gated and ops & {"Erf", "Tanh"} and ops <= _GELU_STEPS:
        kind = "gelu"
    elif gated and ops <= _HARD_GATE_STEPS:
        kind = "hardswish"
    else:
        kind = "elementwise"
    owed = _closing_scale(model, kind, nodes, ops)
    after = model.sole_consumer(output)
    if owed is not None and after is not None and len(after.input) > 1:
        scale = _scalar(model, after.input[1])
        if scale and ((after.op_type == "Div" and abs(1 / scale - owed) < 1e-6)
                      or (after.op_type == "Mul" and abs(scale - owed) < 1e-6)):
            nodes.append(after)
            output = after.output[0]
    return Activation(kind, tuple(n.name for n in nodes), output)


def _closing_scale(model: Model, kind: str, nodes: list[onnx.NodeProto], ops: set[str]) -> float | None:
    """The scale a spelled-out activation still owes after the Mul that closes it, when the group has none:
    Add(+3) -> Clip(0, 6) -> Mul(x) -> Div(6) for HardSwish, x * (1 + erf(x / sqrt 2)) -> Mul(0.5) for GELU."""
    if _has_const_mul(model, nodes):
        return None
    if kind == "hardswish" and "Clip" in ops and not ({"Div", "HardSigmoid"} & ops):
        return 1 / 6
    return 0.5 if kind == "gelu" and "Erf" in ops else None


def _single_kind(model: Model, node: onnx.NodeProto) -> str:
    if node.op_type == "Clip":
        return "relu6" if _clip_bounds(model, node) == (0.0, 6.0) else "clip"
    if node.op_type in _SIMPLE_ACTIVATIONS:
        return _SIMPLE_ACTIVATIONS[node.op_type]
    scaled = node.op_type in AFFINE and any(model.is_constant(i) for i in node.input)
    return "affine" if scaled else node.op_type.lower()


def _closed_group(model: Model, tensor: str) -> list[onnx.NodeProto] | None:
    """The element-wise nodes, in topological order, that take in every reader of `tensor` and of every tensor
    they compute but one (the group's output), reading nothing else but constants; None when there is no such group.

    Grown one node at a time: a reader of an open tensor (one read outside the group, or a graph output) joins
    once all its run-time inputs are `tensor` or computed in the group, until a single open tensor is left."""
    group: list[onnx.NodeProto] = []
    members: set[str] = set()
    known = {tensor}
    while len(group) < _LARGEST_SPELLING:
        open_tensors = [t for t in (tensor, *(n.output[0] for n in group))
                        if model.is_graph_output(t) or any(r.name not in members for r in model.consumers(t))]
        if group and open_tensors == [group[-1].output[0]]:
            return group
        joining = next((r for t in open_tensors for r in model.consumers(t)
                        if r.name not in members and r.op_type in ELEMENTWISE_MATH and len(r.output) == 1
                        and all(not i or i in known or model.is_constant(i) for i in r.input)), None)
        if joining is None:
            return None
        group.append(joining)
        members.add(joining.name)
        known.add(joining.output[0])
    return None


def _has_const_mul(model: Model, chain: list[onnx.NodeProto]) -> bool:
    return any(n.op_type == "Mul" and any(model.is_constant(i) for i in n.input) for n in chain)


def match_activation_chain(model: Model, tensor: str,
                           accept: Callable[[Activation], bool] | None = None) -> Activation | None:
    """The run of activations (`match_activation`, each accepted by `accept`) applied to `tensor` one after
    another, as one activation: what sits between two convs (e.g. a leftover scale, then HardSwish)."""
    parts = []
    current = tensor
    while (found := match_activation(model, current)) is not None and (accept is None or accept(found)):
        parts.append(found)
        current = found.output
    if not parts:
        return None
    kinds = [p.kind for i, p in enumerate(parts) if i == 0 or p.kind != parts[i - 1].kind]
    return Activation("+".join(kinds), tuple(n for p in parts for n in p.nodes), current)


# -- expand-depthwise pairs ---------------------------------------------------------------


def _is_pointwise(model: Model, node: onnx.NodeProto | None) -> bool:
    if node is None or node.op_type != "Conv" or model.attr(node, "group", 1) != 1:
        return False
    shape = model.declared_shape(node.input[1]) or ()
    return len(shape) == 4 and shape[2:] == (1, 1)


def is_depthwise(model: Model, node: onnx.NodeProto) -> bool:
    """A Conv with one filter per input channel: group = C_out = C_in, weight [C, 1, *kernel]."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return False
    shape = model.declared_shape(node.input[1]) or ()
    groups = model.attr(node, "group", 1)
    return groups > 1 and len(shape) >= 3 and shape[1] == 1 and shape[0] == groups


def upstream_nodes(model: Model, tensor: str, stop_at: str | None = None) -> set[str]:
    """Every node `tensor` is computed from through run-time tensors, walking back no further
    than node `stop_at` (excluded): with it, the nodes on the paths from that node to `tensor`."""
    found, frontier = set(), [tensor]
    while frontier:
        node = model.producer(frontier.pop())
        if node is None or node.name == stop_at or node.name in found:
            continue
        found.add(node.name)
        frontier.extend(i for i in node.input if i and not model.is_constant(i))
    return found


@dataclass(frozen=True)
class ExpandDepthwisePair:
    """A 1x1 conv whose output, through an activation chain nothing else reads, is a depthwise conv's input:
    the two convs fuse_ibn_expansion replaces by one, whether or not an IBN block surrounds them."""

    expand: str
    depthwise: str
    activation: str  # kind of the chain between them (`match_activation_chain`), or "none"
    input: str  # the expand conv's input
    output: str  # the depthwise conv's output
    in_channels: int
    expanded_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    resolution: tuple[int, int] | None = None  # input H x W, when shapes are concrete
    nodes: frozenset[str] = field(default_factory=frozenset, compare=False)  # expand, the chain, depthwise


@dataclass(frozen=True)
class UnpairedExpand:
    """A 1x1 conv that feeds a depthwise conv through element-wise ops only, and why the two are not a pair."""

    expand: str
    depthwise: str
    reason: str


def find_expand_depthwise_pairs(model: Model) -> list[ExpandDepthwisePair]:
    """Every expand-depthwise pair, in graph order (of the depthwise convs)."""
    return [found for dw in model.nodes if isinstance(found := pair_ending_at(model, dw), ExpandDepthwisePair)]


def pair_ending_at(model: Model, dw: onnx.NodeProto) -> ExpandDepthwisePair | UnpairedExpand | None:
    """The pair whose depthwise conv is `dw` (a node of `model`); or why not, when a 1x1 conv feeds `dw`
    through element-wise ops only but something else reads what lies between; None when no 1x1 conv feeds it
    so. Kept per model (a model never changes): fuse_ibn_expansion asks it of every node, after
    `find_ibn_blocks` did."""
    known = _PAIRS.setdefault(model, {})
    if dw.name not in known:
        known[dw.name] = _pair_ending_at(model, dw)
    return known[dw.name]


_PAIRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> node name -> pair_ending_at


def _pair_ending_at(model: Model, dw: onnx.NodeProto) -> ExpandDepthwisePair | UnpairedExpand | None:
    if not is_depthwise(model, dw) or len(model.declared_shape(dw.input[1])) != 4:
        return None
    between, expand = _elementwise_path(model, dw.input[0])
    if expand is None:
        return None
    chain = match_activation_chain(model, expand.output[0])
    if expand.output[0] == dw.input[0] or (chain is not None and chain.output == dw.input[0]):
        if getattr(model.sole_consumer(dw.input[0]), "name", None) == dw.name:  # not a graph output either
            return _pair(model, expand, chain if expand.output[0] != dw.input[0] else None, dw)
    inside = {dw.name, *(n.name for n in between)}
    for tensor in (expand.output[0], *(n.output[0] for n in reversed(between))):
        others = [r.name for r in model.consumers(tensor) if r.name not in inside]
        if others or model.is_graph_output(tensor):
            reader = others[0] if others else "the graph output"
            return UnpairedExpand(expand.name, dw.name, f"{tensor}, between {expand.name} and {dw.name}, "
                                                        f"is also read by {reader}")
    return UnpairedExpand(expand.name, dw.name, f"the element-wise ops between {expand.name} and {dw.name} "
                                                "read another run-time tensor")


def _elementwise_path(model: Model, tensor: str) -> tuple[list[onnx.NodeProto], onnx.NodeProto | None]:
    """(the element-wise nodes `tensor` is computed by, walking back from it no further than other nodes, and
    the 1x1 conv nearest `tensor` among those it stopped at, or None)."""
    between, convs, frontier, seen = [], [], [tensor], set()
    while frontier and len(between) <= 2 * _LARGEST_SPELLING:
        node = model.producer(frontier.pop(0))
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if _is_pointwise(model, node):
            convs.append(node)
        elif node.op_type in ELEMENTWISE_MATH:
            between.append(node)
            frontier.extend(i for i in node.input if i and not model.is_constant(i))
    return between, next(iter(convs), None)


def _pair(model: Model, expand: onnx.NodeProto, chain: Activation | None, dw: onnx.NodeProto) -> ExpandDepthwisePair:
    expand_weight = model.declared_shape(expand.input[1])
    info = _tensor_info_or_none(model)
    shape = info[expand.input[0]].shape if info and expand.input[0] in info else ()
    return ExpandDepthwisePair(
        expand=expand.name, depthwise=dw.name, activation=chain.kind if chain else "none",
        input=expand.input[0], output=dw.output[0], in_channels=expand_weight[1], expanded_channels=expand_weight[0],
        kernel=tuple(model.declared_shape(dw.input[1])[2:]), stride=tuple(model.attr(dw, "strides", [1, 1])),
        resolution=tuple(shape[2:]) if len(shape) == 4 else None,
        nodes=frozenset({expand.name, dw.name, *(chain.nodes if chain else ())}),
    )


# -- IBN blocks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IBNBlock:
    """One inverted-bottleneck block, by the names of its nodes."""

    expand: str
    depthwise: str
    project: str
    expand_activation: str  # kind, or "none"
    depthwise_activation: str
    squeeze_excitation: tuple[str, ...]  # nodes of the SE branch, empty when absent
    residual: str | None  # the Add node, when the block has a skip connection
    input: str
    output: str  # the block's last tensor (residual sum or projection)
    in_channels: int
    expanded_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    resolution: tuple[int, int] | None = None  # input H x W, when shapes are concrete
    nodes: frozenset[str] = field(default_factory=frozenset, compare=False)

    def misaligned(self, multiple: int) -> list[str]:
        """Which of the block's channel counts are not a multiple of `multiple`."""
        counts = {"in": self.in_channels, "expanded": self.expanded_channels, "out": self.out_channels}
        return [name for name, count in counts.items() if count % multiple]


def _match_se(model: Model, tensor: str) -> tuple[tuple[str, ...], str] | None:
    """Squeeze-excitation on `tensor`: (its nodes, the gated output), if that is what reads it."""
    readers = model.consumers(tensor)
    if len(readers) != 2 or model.is_graph_output(tensor):
        return None
    pool = next((r for r in readers if r.op_type in ("GlobalAveragePool", "ReduceMean")), None)
    scale = next((r for r in readers if r.op_type == "Mul"), None)
    if pool is None or scale is None:
        return None
    gate = next(i for i in scale.input if i != tensor)
    branch, frontier = [], [gate]
    while frontier:  # walk back from the gate to the pool; every step must lie on the branch
        name = frontier.pop()
        node = model.producer(name)
        if node is None or len(branch) > 12:
            return None
        branch.append(node.name)
        if node.name == pool.name:
            continue
        frontier.extend(i for i in node.input if i and not model.is_constant(i))
    return tuple(dict.fromkeys(branch[::-1])) + (scale.name,), scale.output[0]


def find_ibn_blocks(model: Model) -> list[IBNBlock]:
    """Every inverted-bottleneck block, in graph order: an expand-depthwise pair followed by a projection.
    Kept per model (a model never changes): scale_depth and fuse_ibn_expansion both ask it of every region
    a search's previews cut."""
    found = _IBN_BLOCKS.get(model)
    if found is None:
        found = _IBN_BLOCKS[model] = tuple(_find_ibn_blocks(model))
    return list(found)


_IBN_BLOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> find_ibn_blocks(model)


def _find_ibn_blocks(model: Model) -> list[IBNBlock]:
    blocks = []
    for pair in find_expand_depthwise_pairs(model):
        dw = model.node(pair.depthwise)
        dw_act = match_activation_chain(model, dw.output[0])
        tail = dw_act.output if dw_act else dw.output[0]
        se_nodes: tuple[str, ...] = ()
        se = _match_se(model, tail)
        if se is not None:
            se_nodes, tail = se
        project = model.sole_consumer(tail)
        if not _is_pointwise(model, project):
            continue
        output = project.output[0]
        residual = next((r for r in model.consumers(output)
                         if r.op_type == "Add" and set(r.input) == {output, pair.input}), None)
        if residual is not None:
            output = residual.output[0]
        nodes = {*pair.nodes, project.name, *se_nodes, *(dw_act.nodes if dw_act else ())}
        if residual is not None:
            nodes.add(residual.name)
        blocks.append(IBNBlock(
            expand=pair.expand, depthwise=pair.depthwise, project=project.name,
            expand_activation=pair.activation, depthwise_activation=dw_act.kind if dw_act else "none",
            squeeze_excitation=se_nodes, residual=residual.name if residual else None,
            input=pair.input, output=output, in_channels=pair.in_channels,
            expanded_channels=pair.expanded_channels, out_channels=model.declared_shape(project.input[1])[0],
            kernel=pair.kernel, stride=pair.stride, resolution=pair.resolution, nodes=frozenset(nodes),
        ))
    return blocks


def _tensor_info_or_none(model: Model):
    try:
        return model.tensor_info
    except Exception:  # no concrete input shapes: blocks are still found, without resolutions
        return None


# -- costs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCost:
    name: str
    op_type: str
    macs: int
    params: int  # elements of the parameters (`graph_parameters`) the node reads, its subgraphs' included
    param_bytes: int
    output_bytes: int
    body: str = ""  # for a node inside a control-flow body, the path to it ("If_0/then_branch"); else ""


@dataclass
class Analysis:
    input_shapes: dict[str, tuple[int, ...]]
    nodes: list[NodeCost]
    macs: int
    params: int
    param_bytes: int
    peak_activation_bytes: int
    peak_at: str  # the node running when activation memory peaks
    op_histogram: dict[str, int]
    blocks: list[IBNBlock]
    pairs: list[ExpandDepthwisePair]  # every expand-depthwise pair, inside an IBN block or not
    warnings: list[str] = field(default_factory=list)  # what could not be counted, and why
    # Which form of the model op_histogram, peak_activation_bytes and peak_at describe: "canonical",
    # or "as given" (`in_given_terms`); everything else is always the canonical model's.
    form: str = "canonical"

    def to_dict(self, multiple: int | None = None) -> dict:
        out = asdict(self)
        for block, raw in zip(self.blocks, out["blocks"]):
            raw["nodes"] = sorted(block.nodes)
            if multiple:
                raw["misaligned"] = block.misaligned(multiple)
        for pair, raw in zip(self.pairs, out["pairs"]):
            raw["nodes"] = sorted(pair.nodes)
        return out


# Quantized ops compute a Conv or a MatMul in integers: the same MACs as their float form.
# op -> the input that holds the weight (the second operand).
CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}
MATMUL_WEIGHT = {"MatMul": 1, "Gemm": 1, "MatMulInteger": 1, "QLinearMatMul": 3}
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}  # gate matrices per direction
CONTROL_FLOW = {"If", "Loop", "Scan"}


def tensor_shape(model: Model, name: str, info) -> tuple | None:
    """The concrete shape of `name` when known, else what the proto declares."""
    return info[name].shape if name in info else model.declared_shape(name)


@dataclass(frozen=True)
class RecurrentShape:
    """LSTM/GRU/RNN: per time step, each direction multiplies the input (batch x inputs) and the
    hidden state (batch x hidden) by its gates' weights (inputs x gates*hidden, hidden x gates*hidden)."""

    steps: int
    directions: int
    batch: int
    gates: int
    hidden: int
    inputs: int

    @property
    def macs(self) -> int:
        return self.steps * self.directions * self.batch * self.gates * self.hidden * (self.inputs + self.hidden)


def recurrent_shape(model: Model, node: onnx.NodeProto, info) -> RecurrentShape | None:
    x, w = tensor_shape(model, node.input[0], info), tensor_shape(model, node.input[1], info)
    if not x or not w or len(x) != 3 or len(w) != 3 or not all(isinstance(d, int) for d in (*x, *w)):
        return None
    steps, batch = (x[1], x[0]) if model.attr(node, "layout", 0) else (x[0], x[1])
    gates = RECURRENT_GATES[node.op_type]
    if node.op_type == "DynamicQuantizeLSTM":  # onnxruntime's int8 LSTM: W is [directions, inputs, gates*hidden]
        directions, inputs, rows = w
    else:  # W is [directions, gates*hidden, inputs]
        directions, rows, inputs = w
    return RecurrentShape(steps, directions, batch, gates, rows // gates, inputs)


@dataclass(frozen=True)
class SubgraphRuns:
    """How a control-flow node runs its subgraphs: one of `alternatives` (the costlier counts), `repeats` times."""

    alternatives: list[tuple[str, Model]]  # (attribute, body): If's two branches, Loop's or Scan's one body
    repeats: int
    warning: str | None = None


# What exporters write as a Loop's trip count when only its condition ends it (torch: int64 max).
_NO_LIMIT = {2**63 - 1, 2**31 - 1}


def subgraph_runs(model: Model, node: onnx.NodeProto) -> SubgraphRuns:
    """If runs one branch once; Loop its body as often as its trip count says when that is a constant
    (the loop may stop earlier on its condition: the count is an upper bound), once with a warning
    otherwise or when the count is an exporter's "no limit"; Scan its body once per slice along the scanned axis."""
    bodies = model.bodies(node)
    if node.op_type == "Loop":
        trips = model.constant(node.input[0]) if node.input and node.input[0] else None
        if trips is None or trips.size != 1:
            return SubgraphRuns(bodies, 1, f"Loop {node.name}: trip count not constant; costed as one iteration")
        if int(trips.reshape(())) in _NO_LIMIT:
            return SubgraphRuns(bodies, 1, f"Loop {node.name}: no trip count (a while loop); costed as one iteration")
        return SubgraphRuns(bodies, int(trips.reshape(())))
    if node.op_type == "Scan":
        scanned = model.attr(node, "num_scan_inputs")
        first = node.input[len(node.input) - scanned]
        axis = (model.attr(node, "scan_input_axes") or [0])[0]
        shape = tensor_shape(model, first, model.tensor_info)
        if not shape or not isinstance(shape[axis], int):
            return SubgraphRuns(bodies, 1, f"Scan {node.name}: scan length unknown; costed as one iteration")
        return SubgraphRuns(bodies, shape[axis])
    return SubgraphRuns(bodies, 1)


def node_macs(model: Model, node: onnx.NodeProto, info, warnings: list[str] | None = None) -> int:
    """MACs of one node at the model's input shapes; a control-flow node's are its subgraphs' (`subgraph_runs`),
    and what could not be counted there is added to `warnings`."""
    op = node.op_type
    if op in CONV_WEIGHT or op == "ConvTranspose":
        weight = tensor_shape(model, node.input[CONV_WEIGHT.get(op, 1)], info)
        if node.output[0] not in info or weight is None or not all(isinstance(d, int) for d in weight):
            return 0
        if op != "ConvTranspose":  # every output element: (Ci/g) * Kh * Kw MACs
            return info[node.output[0]].elements * math.prod(weight[1:])
        source = info.get(node.input[0])  # every input element scatters into (Co/g) * Kh * Kw outputs
        return source.elements * math.prod(weight[1:]) if source else 0
    if op in MATMUL_WEIGHT and node.output[0] in info:
        a = tensor_shape(model, node.input[0], info)
        if not a:
            return 0
        k = a[0] if op == "Gemm" and model.attr(node, "transA", 0) else a[-1]
        return info[node.output[0]].elements * int(k)
    if op in RECURRENT_GATES:
        shape = recurrent_shape(model, node, info)
        return shape.macs if shape else 0
    if op in CONTROL_FLOW:
        return _control_flow_macs(model, node, [] if warnings is None else warnings)
    return 0


def body_info(body: Model):
    """The concrete shapes inside a subgraph, or None when they cannot be found: a branch that
    never runs at these shapes may be invalid for them (a Squeeze of an axis that is not 1)."""
    try:
        return body.tensor_info
    except Exception:  # onnxruntime refuses the body: its nodes count nothing, and the caller warns
        return None


def _control_flow_macs(model: Model, node: onnx.NodeProto, warnings: list[str]) -> int:
    runs = subgraph_runs(model, node)
    if runs.warning:
        warnings.append(runs.warning)
    best = 0
    for attribute, body in runs.alternatives:
        info = body_info(body)
        if info is None:
            warnings.append(f"{node.name} ({node.op_type}): the shapes inside {attribute} are unknown; "
                            "its nodes count no MACs")
            continue
        best = max(best, sum(node_macs(body, n, info, warnings) for n in body.nodes))
    return runs.repeats * best


# -- parameters -----------------------------------------------------------------------------

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
# Quantized weights and their zero points are 8-bit (or 4-bit) integers; a quantized bias is int32.
_QUANTIZED_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


def graph_parameters(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The constants of `graph` (initializers and Constant nodes, not those of its subgraphs) that are
    parameters: floating point, 8-bit or 4-bit quantized, or a quantized int32 bias (what a
    DequantizeLinear or QLinearConv's bias input reads). Shapes, axes and indices are not."""
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    biases = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    biases |= {n.input[8] for n in graph.node if n.op_type == "QLinearConv" and len(n.input) > 8}
    return {name: t for name, t in constants.items() if t.data_type in _FLOAT_TYPES | _QUANTIZED_TYPES
            or (t.data_type == onnx.TensorProto.INT32 and name in biases)}


def subgraph_parameters(node: onnx.NodeProto) -> list[onnx.TensorProto]:
    """The parameters held inside `node`'s subgraphs, however deeply nested."""
    found = []
    for _, graph in subgraphs(node):
        found.extend(graph_parameters(graph).values())
        for inner in graph.node:
            found.extend(subgraph_parameters(inner))
    return found


def _size(tensors) -> tuple[int, int]:
    """(elements, bytes) of constant tensors."""
    elements = [(math.prod(t.dims), itemsize(t.data_type)) for t in tensors]
    return sum(e for e, _ in elements), sum(e * size for e, size in elements)


def peak_activation(model: Model, info) -> tuple[int, str]:
    """(peak bytes of live activations, node running at the peak) over the topological order."""
    order = model.nodes
    last_use: dict[str, int] = {}
    for index, node in enumerate(order):
        for name in model.reads(node):  # a tensor read inside a subgraph lives until that node runs
            if name and not model.is_constant(name):
                last_use[name] = index
    end = len(order)
    for name in model.graph_output_names:
        last_use[name] = end
    live = {vi.name: info[vi.name].bytes for vi in model.graph_inputs if vi.name in info}
    peak, peak_at = sum(live.values()), order[0].name if order else ""
    for index, node in enumerate(order):
        if node.op_type == "DequantizeLinear" and model.is_constant(node.input[0]):
            continue  # a QDQ model's weights, spelled as their float view: parameters, not activations
        for name in node.output:
            if name and name in info:
                live[name] = info[name].bytes
        current = sum(live.values())
        if current > peak:
            peak, peak_at = current, node.name
        for name in [n for n in live if last_use.get(n, -1) <= index]:
            del live[name]
    return peak, peak_at


@dataclass(frozen=True)
class MemorySummary:
    params: int
    param_bytes: int
    peak_activation_bytes: int
    peak_at: str


def memory_summary(model: Model) -> MemorySummary:
    """Parameters and peak activation memory alone: cheap enough to run on every search candidate."""
    weights = list(graph_parameters(model.graph).values())
    for node in model.nodes:
        weights.extend(subgraph_parameters(node))
    params, param_bytes = _size(weights)
    peak, peak_at = peak_activation(model, model.tensor_info)
    return MemorySummary(params, param_bytes, peak, peak_at)


def _op_histogram(model: Model) -> dict[str, int]:
    """Op types of every node, those inside subgraphs included."""
    def walk(graph: onnx.GraphProto):
        for node in graph.node:
            yield node.op_type
            for _, sub in subgraphs(node):
                yield from walk(sub)
    return dict(Counter(walk(model.graph)).most_common())


def in_given_terms(analysis: Analysis, given: Model, named: set[str]) -> Analysis:
    """`analysis` of a canonical model with the op counts and the peak activation memory of the model
    as given instead: `given` is it with only its representation normalized (Constant nodes lifted,
    shapes inferred), `named` the node names its file holds. The user's graph may spell HardSwish as
    one op where canonical form has other ops, and canonicalization names the nodes it creates and the
    ones a file leaves unnamed: a node without a name of its own is shown by its op and the tensor it
    writes."""
    memory = memory_summary(given)
    peak_at = memory.peak_at
    if peak_at and peak_at not in named:
        node = given.node(peak_at)
        peak_at = f"{node.op_type} writing '{node.output[0]}'"
    return replace(analysis, op_histogram=_op_histogram(given), peak_activation_bytes=memory.peak_activation_bytes,
                   peak_at=peak_at, form="as given")


def _node_costs(model: Model, body: str, warnings: list[str]) -> list[NodeCost]:
    """The cost of every node, each control-flow node followed by the nodes of its bodies (`body` says
    where they are); a body whose shapes cannot be found lists nothing (node_macs warned about it)."""
    info = model.tensor_info
    parameters = graph_parameters(model.graph)
    costs = []
    for node in model.nodes:
        weights = [parameters[i] for i in dict.fromkeys(node.input) if i in parameters] + subgraph_parameters(node)
        params, param_bytes = _size(weights)
        costs.append(NodeCost(
            name=node.name, op_type=node.op_type, macs=node_macs(model, node, info, warnings),
            params=params, param_bytes=param_bytes,
            output_bytes=sum(info[o].bytes for o in node.output if o in info), body=body,
        ))
        for attribute, inner in model.bodies(node):
            if body_info(inner) is not None:
                costs.extend(_node_costs(inner, f"{body}/{node.name}/{attribute}".lstrip("/"), []))
    return costs


def analyze(model: Model) -> Analysis:
    """The full cost and structure summary of `model` at its input shapes."""
    warnings: list[str] = []
    costs = _node_costs(model, "", warnings)
    memory = memory_summary(model)
    return Analysis(
        input_shapes=dict(model.input_shapes),
        nodes=costs,
        macs=sum(c.macs for c in costs if not c.body),  # a control-flow node's MACs already hold its bodies' MACs
        params=memory.params,
        param_bytes=memory.param_bytes,
        peak_activation_bytes=memory.peak_activation_bytes,
        peak_at=memory.peak_at,
        op_histogram=_op_histogram(model),
        blocks=find_ibn_blocks(model),
        pairs=find_expand_depthwise_pairs(model),
        warnings=warnings,
    )
