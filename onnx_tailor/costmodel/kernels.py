"""Kernels: the units a target actually executes, after its compiler's fusion.

A real NPU compiler (and onnxruntime's CPU provider) folds an activation or
a per-channel scale/shift into the Conv, MatMul or Gemm before it when that
op's output has no other reader: no dispatch of its own, and the
intermediate tensor never exists. A chain of such ops fuses as a whole, and
an activation spelled out in basic ops (HardSwish as Add/Clip/Mul/Div, or
x * HardSigmoid(x), or swish x * Sigmoid(x), also x * Sigmoid(b * x))
counts as one activation when the producer's output has no reader outside
it: the chain is `analysis.match_activation_chain`, the same that block
discovery reads, cut at the first activation the target cannot fuse. Which
activation kinds fuse is the target's `fusable_activations`; a scale or
shift (Add, Sub, Mul or Div by a constant: Sub and Div are Add and Mul by
another constant) always does. An entry spelled as ONNX ops, joined by `+`
in the order they run (`HardSwish`, `HardSigmoid+Mul`), fuses that spelling
only: onnxruntime fuses a HardSwish op, and x * HardSigmoid(x), into the conv
before it, but runs the Add/Clip/Mul/Div spelling one op at a time.

An activation of a kind in the target's `grouped_activations` that does
not fuse runs as one kernel of its own, all its ops together: onnxruntime's
CPU provider computes x * Sigmoid(x) as one QuickGelu, and runs a spelled-out
HardSwish outside its blocked conv layout, its ops between one reorder out of
that layout and one back in; timed apart, the ops would each seem to pay the
reorders, or none would.

Every other node is a kernel of its own. Both the simulator and the learned
cost model score kernels, so they agree on what runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis import (CONTROL_FLOW, CONV_WEIGHT, MATMUL_WEIGHT, RECURRENT_GATES, match_activation,
                        match_activation_chain)
from ..ir import Model
from .target import Target

ANCHORS = {"Conv", "MatMul", "Gemm"}
FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",  # layout only: no work, no dispatch
        "QuantizeLinear", "DequantizeLinear"}  # the NPU runs int8: (de)quantizing is its format, not work
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu",
    "Tanh", "Elu", "Selu", "Softplus", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Pow", "Neg", "Abs", "Max", "Min",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Cast", "Where", "Equal", "Less", "Greater", "Not", "And", "Or",
    "BatchNormalization",  # inference BatchNorm is a per-channel scale and shift
    "DynamicQuantizeLinear",  # a standalone quantization computes its scale at run time
}
POOLING = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}
NORMALIZATION = {"Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
                 "LpNormalization", "MeanVarianceNormalization"}
MEMORY = {"Transpose", "Concat", "Slice", "Pad", "Resize", "Upsample", "Split", "Tile", "Expand",
          "DepthToSpace", "SpaceToDepth"}


# The scale and zero-point inputs of quantized ops: like the Quantize/DequantizeLinear ops around a
# QDQ conv, they are the int8 format itself, not data the kernel moves, so every spelling of a
# quantized conv costs what its float form does.
QUANTIZATION_PARAMETERS = {"QLinearConv": {1, 2, 4, 5, 6, 7}, "QLinearMatMul": {1, 2, 4, 5, 6, 7},
                           "ConvInteger": {2, 3}, "MatMulInteger": {2, 3}, "DynamicQuantizeLSTM": {8, 9, 10, 11}}


@dataclass(frozen=True)
class Kernel:
    """One executed unit: an anchor node and the nodes fused into it."""

    name: str  # the anchor node's name
    op_type: str
    kind: str  # conv, grouped_conv, depthwise, matmul, deconv, recurrent, control, gather, elementwise, pool, norm,
    #            memory, free, other
    nodes: tuple[str, ...]  # anchor first
    fused: tuple[str, ...]  # op types fused into the anchor
    inputs: tuple[str, ...]  # activation tensors it reads
    outputs: tuple[str, ...]  # tensors it writes that something outside it reads
    weights: tuple[str, ...]  # constant tensors it reads


def kernel_kind(model: Model, node) -> str:
    op = node.op_type
    if op in CONV_WEIGHT:  # quantized convs too: the NPU computes every conv in int8
        groups = model.attr(node, "group", 1)
        if groups == 1:
            return "conv"
        # Depthwise: one input channel per group. The weight's shape says so even where the input's shape
        # is not declared (a conv between two other ops of a sweep network, a rewritten model).
        weight = model.declared_shape(node.input[CONV_WEIGHT[op]])
        if weight is not None and len(weight) > 1 and isinstance(weight[1], int):
            return "depthwise" if weight[1] == 1 else "grouped_conv"
        in_channels = model.channels(node.input[0])
        return "depthwise" if in_channels is not None and groups == in_channels else "grouped_conv"
    if op in MATMUL_WEIGHT:
        return "matmul"
    if op in RECURRENT_GATES:
        return "recurrent"
    if op in CONTROL_FLOW:
        return "control"
    if op == "ConvTranspose":
        return "deconv"
    if op == "Gather" and model.is_constant(node.input[0]):
        return "gather"
    if op in FREE:
        return "free"
    if op in ELEMENTWISE:
        return "elementwise"
    if op in POOLING:
        return "pool"
    if op in NORMALIZATION:
        return "norm"
    if op in MEMORY:
        return "memory"
    return "other"


def _fused_chain(model: Model, anchor, fusable: frozenset[str]) -> list:
    """The activation / scale-shift nodes that fuse into `anchor`, in order: the run of activations after it
    (`analysis.match_activation_chain`) as far as each is a fusable kind or a scale/shift by a constant."""
    def fuses(act) -> bool:
        spelling = "+".join(model.node(n).op_type for n in act.nodes)
        return act.kind in fusable or act.kind == "affine" or spelling in fusable
    chain = match_activation_chain(model, anchor.output[0], fuses)
    return [model.node(n) for n in chain.nodes] if chain else []


def _grouped_activation(model: Model, first, grouped: frozenset[str]) -> list:
    """The nodes of the activation that `first` opens, when it is of a kind in `grouped` and has more than
    one op; else nothing."""
    for tensor in first.input:
        if not tensor or model.is_constant(tensor):
            continue
        act = match_activation(model, tensor)
        if act is not None and act.kind in grouped and len(act.nodes) > 1 and act.nodes[0] == first.name:
            return [model.node(n) for n in act.nodes]
        return []
    return []


def kernels_for(model: Model, target: Target) -> list[Kernel]:
    """The model's kernels as `target`'s compiler forms them: its fusable and grouped activations."""
    return group_kernels(model, target.fusable_activations, target.grouped_activations)


def group_kernels(model: Model, fusable_activations: tuple[str, ...] | frozenset[str],
                  grouped_activations: tuple[str, ...] | frozenset[str] = ()) -> list[Kernel]:
    """The model's nodes grouped into kernels, in execution (topological) order."""
    return [make_kernel(model, members) for members in kernel_members(model, fusable_activations,
                                                                      grouped_activations)]


def kernel_members(model: Model, fusable_activations: tuple[str, ...] | frozenset[str],
                   grouped_activations: tuple[str, ...] | frozenset[str] = ()) -> list[list]:
    """`group_kernels`' grouping alone: each kernel's nodes, anchor first, in execution order. Describing a
    kernel (`make_kernel`) costs more than grouping it; a rewrite's change needs only the kernels it touches."""
    fusable, grouped = frozenset(fusable_activations), frozenset(grouped_activations)
    claimed: set[str] = set()
    groups = []
    for node in model.nodes:
        if node.name in claimed:
            continue
        members = [node]
        if node.op_type in ANCHORS and fusable:
            members += _fused_chain(model, node, fusable)
        elif grouped and node.op_type not in ANCHORS:
            members = _grouped_activation(model, node, grouped) or members
        claimed.update(m.name for m in members)
        groups.append(members)
    return groups


def make_kernel(model: Model, members: list) -> Kernel:
    """The kernel of `members` (`kernel_members`' nodes) in `model`."""
    names = {m.name for m in members}
    produced = {o for m in members for o in m.output if o}
    inputs, weights = [], []
    for m in members:
        for index, name in enumerate(m.input):
            if not name or name in produced or index in QUANTIZATION_PARAMETERS.get(m.op_type, ()):
                continue
            constant = _constant_source(model, name)
            if constant is not None:
                weights.append(constant)
            else:
                inputs.append(name)
    outputs = [o for m in members for o in m.output
               if o and (model.is_graph_output(o) or any(r.name not in names for r in model.consumers(o)))]
    anchor = members[0]
    return Kernel(
        name=anchor.name, op_type=anchor.op_type, kind=kernel_kind(model, anchor),
        nodes=tuple(m.name for m in members), fused=tuple(m.op_type for m in members[1:]),
        inputs=tuple(dict.fromkeys(inputs)), outputs=tuple(outputs), weights=tuple(dict.fromkeys(weights)),
    )


def _constant_source(model: Model, tensor: str) -> str | None:
    """The constant `tensor` is, possibly through free ops (a DequantizeLinear of int8 weights):
    what a kernel reading it reads from DRAM as its weights."""
    producer = model.producer(tensor)
    while producer is not None and producer.op_type in FREE and producer.input:
        tensor = producer.input[0]
        producer = model.producer(tensor)
    return tensor if model.is_constant(tensor) else None
