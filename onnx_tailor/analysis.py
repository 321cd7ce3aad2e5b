"""What a model costs and how it is built: MACs, parameters, activation memory, IBN blocks.

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

Inverted-bottleneck (IBN) blocks are found by structure, whatever spelling
the exporter chose for the activations:
    x -> Conv 1x1 (expand) -> act -> depthwise Conv KxK -> act
      -> [squeeze-excitation: GlobalAveragePool -> ... -> gate, Mul] -> Conv 1x1 (project) -> [Add x]
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx

from .ir import Model
from .ir.shapes import itemsize
from .ir.subgraphs import subgraphs

# -- activations ------------------------------------------------------------------------

_SIMPLE_ACTIVATIONS = {"Relu": "relu", "Sigmoid": "sigmoid", "HardSwish": "hardswish", "HardSigmoid": "hardsigmoid",
                       "LeakyRelu": "leakyrelu", "Tanh": "tanh", "Elu": "elu", "Gelu": "gelu", "PRelu": "prelu"}
# Single-input steps a decomposed gate (HardSigmoid or Sigmoid of x) is spelled with.
_GATE_STEPS = {"Add", "Clip", "Div", "Mul", "Sigmoid", "HardSigmoid", "Relu"}


@dataclass(frozen=True)
class Activation:
    kind: str  # relu, relu6, hardswish, swish, ...
    nodes: tuple[str, ...]
    output: str  # the tensor the activation produces


def _scalar(model: Model, tensor: str) -> float | None:
    value = model.constant(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def _clip_bounds(model: Model, node: onnx.NodeProto) -> tuple[float | None, float | None]:
    if len(node.input) > 1:  # opset >= 11: bounds are inputs
        low = _scalar(model, node.input[1]) if len(node.input) > 1 and node.input[1] else None
        high = _scalar(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return low, high
    return model.attr(node, "min"), model.attr(node, "max")


def match_activation(model: Model, tensor: str) -> Activation | None:
    """The activation applied to `tensor` if every reader of `tensor` belongs to it."""
    readers = model.consumers(tensor)
    if model.is_graph_output(tensor) or not readers:
        return None
    if len(readers) == 1:
        node = readers[0]
        if node.op_type == "Clip":
            low, high = _clip_bounds(model, node)
            kind = "relu6" if (low, high) == (0.0, 6.0) else "clip"
            return Activation(kind, (node.name,), node.output[0])
        if node.op_type in _SIMPLE_ACTIVATIONS:
            return Activation(_SIMPLE_ACTIVATIONS[node.op_type], (node.name,), node.output[0])
        return None
    if len(readers) == 2:
        return _match_gated(model, tensor, readers)
    return None


def _match_gated(model: Model, tensor: str, readers: list[onnx.NodeProto]) -> Activation | None:
    """x * gate(x): swish (Sigmoid gate) or hardswish (HardSigmoid or Add/Clip/Div gate)."""
    for closing in readers:
        if closing.op_type != "Mul":
            continue
        gate_start = next(r for r in readers if r.name != closing.name)
        chain, node = [], gate_start
        while node.name != closing.name:  # walk the gate: single-reader steps until it meets the Mul
            if node.op_type not in _GATE_STEPS or len(chain) > 4:
                return None
            chain.append(node)
            nxt = model.sole_consumer(node.output[0])
            if nxt is None:
                return None
            node = nxt
        ops = [n.op_type for n in chain]
        kind = "swish" if "Sigmoid" in ops else "hardswish"
        nodes = [n.name for n in chain] + [closing.name]
        output = closing.output[0]
        # Add(+3) -> Clip(0, 6) -> Mul(x) -> Div(6): the scale by 1/6 comes after the Mul.
        if "Clip" in ops and not ({"Div", "HardSigmoid"} & set(ops)) and not _has_const_mul(model, chain):
            after = model.sole_consumer(output)
            scale = _scalar(model, after.input[1]) if after is not None and len(after.input) > 1 else None
            if after is not None and ((after.op_type == "Div" and scale == 6.0)
                                      or (after.op_type == "Mul" and scale and abs(scale - 1 / 6) < 1e-6)):
                nodes.append(after.name)
                output = after.output[0]
        return Activation(kind, tuple(nodes), output)
    return None


def _has_const_mul(model: Model, chain: list[onnx.NodeProto]) -> bool:
    return any(n.op_type == "Mul" and any(model.is_constant(i) for i in n.input) for n in chain)


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


def _find_expand(model: Model, tensor: str) -> tuple[onnx.NodeProto, Activation | None] | None:
    """The 1x1 conv whose (activated) output is `tensor`, searching a few nodes upstream."""
    frontier, seen = [tensor], set()
    for _ in range(6):
        upstream = []
        for name in frontier:
            node = model.producer(name)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if _is_pointwise(model, node):
                if node.output[0] == tensor:
                    return node, None
                act = match_activation(model, node.output[0])
                if act is not None and act.output == tensor:
                    return node, act
                continue
            upstream.extend(i for i in node.input if i and not model.is_constant(i))
        frontier = upstream
    return None


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
    """Every inverted-bottleneck block, in graph order."""
    blocks = []
    for dw in model.nodes:
        reader = model.sole_consumer(dw.input[0])
        two_d = is_depthwise(model, dw) and len(model.declared_shape(dw.input[1])) == 4
        if not two_d or reader is None or reader.name != dw.name:
            continue
        found = _find_expand(model, dw.input[0])
        if found is None:
            continue
        expand, expand_act = found
        dw_act = match_activation(model, dw.output[0])
        tail = dw_act.output if dw_act else dw.output[0]
        se_nodes: tuple[str, ...] = ()
        se = _match_se(model, tail)
        if se is not None:
            se_nodes, tail = se
        project = model.sole_consumer(tail)
        if not _is_pointwise(model, project):
            continue
        block_input = expand.input[0]
        output = project.output[0]
        residual = next((r for r in model.consumers(output)
                         if r.op_type == "Add" and set(r.input) == {output, block_input}), None)
        if residual is not None:
            output = residual.output[0]
        kernel = tuple(model.declared_shape(dw.input[1])[2:])
        stride = tuple(model.attr(dw, "strides", [1, 1]))
        resolution = None
        info = _tensor_info_or_none(model)
        if info and block_input in info and len(info[block_input].shape) == 4:
            resolution = tuple(info[block_input].shape[2:])
        nodes = {expand.name, dw.name, project.name, *se_nodes}
        nodes |= set(expand_act.nodes if expand_act else ()) | set(dw_act.nodes if dw_act else ())
        if residual is not None:
            nodes.add(residual.name)
        blocks.append(IBNBlock(
            expand=expand.name, depthwise=dw.name, project=project.name,
            expand_activation=expand_act.kind if expand_act else "none",
            depthwise_activation=dw_act.kind if dw_act else "none",
            squeeze_excitation=se_nodes, residual=residual.name if residual else None,
            input=block_input, output=output,
            in_channels=model.declared_shape(expand.input[1])[1],
            expanded_channels=model.declared_shape(expand.input[1])[0],
            out_channels=model.declared_shape(project.input[1])[0],
            kernel=kernel, stride=stride, resolution=resolution, nodes=frozenset(nodes),
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
    warnings: list[str] = field(default_factory=list)  # what could not be counted, and why

    def to_dict(self, multiple: int | None = None) -> dict:
        out = asdict(self)
        for block, raw in zip(self.blocks, out["blocks"]):
            raw["nodes"] = sorted(block.nodes)
            if multiple:
                raw["misaligned"] = block.misaligned(multiple)
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


def analyze(model: Model) -> Analysis:
    """The full cost and structure summary of `model` at its input shapes."""
    info = model.tensor_info
    parameters = graph_parameters(model.graph)
    costs, warnings = [], []
    for node in model.nodes:
        weights = [parameters[i] for i in dict.fromkeys(node.input) if i in parameters] + subgraph_parameters(node)
        params, param_bytes = _size(weights)
        costs.append(NodeCost(
            name=node.name, op_type=node.op_type, macs=node_macs(model, node, info, warnings),
            params=params, param_bytes=param_bytes,
            output_bytes=sum(info[o].bytes for o in node.output if o in info),
        ))
    memory = memory_summary(model)
    return Analysis(
        input_shapes=dict(model.input_shapes),
        nodes=costs,
        macs=sum(c.macs for c in costs),
        params=memory.params,
        param_bytes=memory.param_bytes,
        peak_activation_bytes=memory.peak_activation_bytes,
        peak_at=memory.peak_at,
        op_histogram=_op_histogram(model),
        blocks=find_ibn_blocks(model),
        warnings=warnings,
    )
