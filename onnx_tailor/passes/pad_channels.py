"""pad_channels: widen a Conv's output channels with zero filters to a multiple of P.

Before:  x -> Conv(W: [C, Ci, k, k]) -> act -> Conv(V: [Co, C, 1, 1]) -> y
After:   x -> Conv(W': [C+p, Ci, k, k]) -> act -> Conv(V': [Co, C+p, 1, 1]) -> y

    W' = [W; 0],  b' = [b; 0]     (p new filters, all zero)
    V' = [V, 0]                   (the consumer ignores the new channels)
    p  = ceil(C / P) * P - C      (P: `multiple`, the target's parallelism factor)

On an accelerator that computes P channels at once, C and ceil(C/P)*P
channels cost the same cycles; the padding itself is free there, and it lets
neighbouring rewrites see aligned shapes.

Padded channels hold finite values that nobody reads: every op between the
widened Conv and the consumers that drop them must carry the channel axis
through unchanged. The pass follows the padded tensors forwards and backwards
to a closed group:
- activations, BatchNormalization, pooling and Resize carry the padding on
  (their per-channel constants are padded with neutral values);
- a depthwise Conv widens with it (zero filters, `group` += p);
- an elementwise op with a second full-channel input (a residual Add, the
  Mul of a squeeze-excitation gate) pulls that input into the group, and its
  producer is widened too (so a residual stage is padded as a whole);
- a channel Concat carries it when the padded tensor is its last input (the
  new channels land at the end);
- a standard Conv, ConvTranspose, or a Flatten (or Reshape to (N, C*H*W))
  into Gemm/MatMul drops it (zero input weights).
Anything else on the path (graph outputs, reshapes, divisions by a padded
tensor, ...) declines the site and says which node and why. Exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import onnx

from ..errors import PassError
from ..ir import Model
from .base import Declined, Exactness, Param, Pass, Site
from .graph_edit import constant_input, nodes_by_name, set_constant_input

# Ops that map channel c of their first input to channel c of their output, and
# stay finite on any finite input (so the unread padded values never turn to NaN).
_CHANNELWISE = {
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Tanh", "Elu", "Selu",
    "Softplus", "Neg", "Abs", "Identity", "Erf", "Gelu", "BatchNormalization",
    "GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "Resize", "Upsample",
}
_BINARY = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0, "Max": 0.0, "Min": 0.0}  # op -> neutral pad value
# Per-channel parameters of channelwise ops: (input index, pad value).
_CHANNEL_PARAMS = {"BatchNormalization": ((1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)), "PRelu": ((1, 0.0),)}


class Decline(Exception):
    """The group cannot be padded; the message says which node stops it."""


@dataclass
class PadPlan:
    """Everything one padding touches, found by `plan_padding`."""

    pad: int
    tensors: set[str] = field(default_factory=set)  # tensors whose channel axis grows by `pad`
    sources: set[str] = field(default_factory=set)  # Conv/ConvTranspose that get zero output filters
    sinks: dict[str, int] = field(default_factory=dict)  # node -> rows of zero input weights to add
    depthwise: set[str] = field(default_factory=set)  # depthwise Convs that widen with the group
    constants: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)  # (node, input) -> (axis, fill)
    reshape_shapes: dict[str, np.ndarray] = field(default_factory=dict)  # flattening Reshape -> widened shape
    nodes: set[str] = field(default_factory=set)


def plan_padding(model: Model, anchor: onnx.NodeProto, pad: int) -> PadPlan:
    """Close the group of tensors that must grow with `anchor`'s output; raise Decline if it cannot."""
    plan = PadPlan(pad)
    plan.nodes.add(anchor.name)
    plan.sources.add(anchor.name)
    pending = [anchor.output[0]]
    seen_edges: set[tuple[str, str]] = set()

    def grow(tensor: str) -> None:
        if tensor not in plan.tensors:
            plan.tensors.add(tensor)
            pending.append(tensor)

    while pending:
        tensor = pending.pop()
        plan.tensors.add(tensor)
        if model.is_graph_output(tensor):
            raise Decline(f"the padded channels would reach graph output '{tensor}'")
        producer = model.producer(tensor)
        if producer is None:
            raise Decline(f"the padded group reaches graph input '{tensor}'")
        if (producer.name, tensor) not in seen_edges:
            seen_edges.add((producer.name, tensor))
            _widen_producer(model, producer, plan, grow)
        for consumer in model.consumers(tensor):
            if (consumer.name, tensor) not in seen_edges:
                seen_edges.add((consumer.name, tensor))
                _carry_through_consumer(model, consumer, tensor, plan, grow)
    return plan


def _is_depthwise(model: Model, conv: onnx.NodeProto) -> bool:
    weight_shape = model.declared_shape(conv.input[1]) or ()
    groups = model.attr(conv, "group", 1)
    return groups > 1 and len(weight_shape) >= 2 and weight_shape[1] == 1 and weight_shape[0] == groups


def _widen_producer(model: Model, node: onnx.NodeProto, plan: PadPlan, grow) -> None:
    """`node` produces a tensor of the group: make it produce the padded channels."""
    plan.nodes.add(node.name)
    op = node.op_type
    if op in ("Conv", "ConvTranspose") and model.attr(node, "group", 1) == 1:
        if not model.is_constant(node.input[1]):
            raise Decline(f"{node.name}: its weights are not constant")
        plan.sources.add(node.name)
    elif op == "Conv" and _is_depthwise(model, node):
        plan.depthwise.add(node.name)
        grow(node.input[0])
    elif op in _CHANNELWISE:
        _pad_channel_params(model, node, plan)
        grow(node.input[0])
    elif op in _BINARY:
        _join_binary(model, node, plan, grow)
    elif op == "Concat" and _is_channel_concat(model, node):
        grow(node.input[-1])
    else:
        raise Decline(f"{node.name} ({op}) produces a tensor of the group and cannot be widened")


def _carry_through_consumer(model: Model, node: onnx.NodeProto, tensor: str, plan: PadPlan, grow) -> None:
    """`node` reads a padded tensor: carry the padding through, or drop it with zero weights."""
    plan.nodes.add(node.name)
    op = node.op_type
    if op == "Conv" and model.attr(node, "group", 1) == 1 and node.input[0] == tensor:
        _add_sink(model, node, plan, plan.pad)
    elif op == "Conv" and node.input[0] == tensor and _is_depthwise(model, node):
        plan.depthwise.add(node.name)
        grow(node.output[0])
    elif op == "Conv" and node.input[0] == tensor:
        raise Decline(f"{node.name}: a grouped Conv (group {model.attr(node, 'group')}) reads the padded channels")
    elif op == "ConvTranspose" and model.attr(node, "group", 1) == 1 and node.input[0] == tensor:
        _add_sink(model, node, plan, plan.pad)
    elif op in _CHANNELWISE and node.input[0] == tensor:
        if op == "Resize" and len(node.input) > 3 and node.input[3]:
            raise Decline(f"{node.name}: Resize to explicit sizes fixes the channel count")
        _pad_channel_params(model, node, plan)
        grow(node.output[0])
    elif op in _BINARY:
        _join_binary(model, node, plan, grow)
    elif op == "Concat" and _is_channel_concat(model, node) and node.input[-1] == tensor:
        grow(node.output[0])
    elif op == "Concat" and _is_channel_concat(model, node):
        raise Decline(f"{node.name}: the padded tensor is not the last input of a channel Concat")
    elif op == "Flatten" and model.attr(node, "axis", 1) == 1:
        _flatten_into_matmul(model, node, tensor, plan)
    elif op == "Reshape" and node.input[0] == tensor and _flattening_shape(model, node, tensor) is not None:
        plan.reshape_shapes[node.name] = _flattening_shape(model, node, tensor, plan.pad)
        _flatten_into_matmul(model, node, tensor, plan)
    elif op in ("Gemm", "MatMul") and node.input[0] == tensor and len(model.declared_shape(tensor) or ()) == 2:
        _add_sink(model, node, plan, plan.pad)
    else:
        raise Decline(f"{node.name} ({op}) reads the padded channels and cannot carry them")


def _flatten_into_matmul(model: Model, node: onnx.NodeProto, tensor: str, plan: PadPlan) -> None:
    """NCHW -> (N, C*H*W): the padded channels land at the end, so the matrix
    that reads the flattened features gets pad*H*W zero rows appended."""
    shape = model.declared_shape(tensor) or ()
    spatial = shape[2:]
    if len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in spatial):
        raise Decline(f"{node.name}: flattening a tensor whose spatial size is unknown")
    rows = plan.pad * math.prod(spatial)
    readers = model.consumers(node.output[0])
    if not readers or model.is_graph_output(node.output[0]):
        raise Decline(f"{node.name}: the flattened padded tensor is a graph output")
    plan.tensors.add(node.output[0])
    for reader in readers:
        plan.nodes.add(reader.name)
        if reader.op_type not in ("Gemm", "MatMul") or reader.input[0] != node.output[0]:
            raise Decline(f"{reader.name} ({reader.op_type}) reads the flattened padded channels")
        _add_sink(model, reader, plan, rows)


def _flattening_shape(model: Model, node: onnx.NodeProto, tensor: str, pad: int = 0) -> np.ndarray | None:
    """For a Reshape that flattens NCHW to (N, C*H*W) by a constant shape: that shape
    widened by `pad` channels; None for any other Reshape."""
    target = model.constant(node.input[1])
    shape = model.declared_shape(tensor) or ()
    if target is None or target.shape != (2,) or target[0] not in (0, -1) or len(shape) < 2:
        return None
    channels, spatial = shape[1], shape[2:]
    if not isinstance(channels, int) or not all(isinstance(d, int) and d > 0 for d in spatial):
        return None
    features = channels * math.prod(spatial)
    if target[1] == -1 and target[0] == 0:
        return target
    if target[1] != features:
        return None
    return np.array([target[0], (channels + pad) * math.prod(spatial)], dtype=target.dtype)


def _add_sink(model: Model, node: onnx.NodeProto, plan: PadPlan, rows: int) -> None:
    if not model.is_constant(node.input[1]):
        raise Decline(f"{node.name}: its weights are not constant")
    if node.op_type == "Gemm" and model.attr(node, "transA", 0):
        raise Decline(f"{node.name}: Gemm with transA")
    plan.sinks[node.name] = rows


def _is_channel_concat(model: Model, node: onnx.NodeProto) -> bool:
    rank = len(model.declared_shape(node.output[0]) or ())
    axis = model.attr(node, "axis", 0)
    return rank > 1 and axis % rank == 1


def _pad_channel_params(model: Model, node: onnx.NodeProto, plan: PadPlan) -> None:
    for index, fill in _CHANNEL_PARAMS.get(node.op_type, ()):
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            continue
        if not model.is_constant(name):
            raise Decline(f"{node.name}: its per-channel parameter '{name}' is not constant")
        shape = model.declared_shape(name)
        if node.op_type == "PRelu" and (len(shape) == 0 or math.prod(shape) == 1):
            continue  # one shared slope: nothing per channel
        axis = 0 if node.op_type == "BatchNormalization" or len(shape) == 1 else len(shape) - 3
        plan.constants[(node.name, index)] = (axis, fill)


def _join_binary(model: Model, node: onnx.NodeProto, plan: PadPlan, grow) -> None:
    """Elementwise op on the path: pad per-channel constants, pull full-channel inputs into the group."""
    out_rank = len(model.declared_shape(node.output[0]) or ())
    if out_rank < 2:
        raise Decline(f"{node.name}: the rank of its output is unknown")
    for index, name in enumerate(node.input):
        if name in plan.tensors:
            continue
        shape = model.declared_shape(name)
        if shape is None:
            raise Decline(f"{node.name}: the shape of its input '{name}' is unknown")
        axis = len(shape) - out_rank + 1  # where the channel axis of the output falls in this input
        if axis < 0 or shape[axis] == 1:
            continue  # broadcast along channels: nothing to pad
        if model.is_constant(name):
            plan.constants[(node.name, index)] = (axis, _BINARY[node.op_type])
        elif node.op_type == "Div" and index == 1:
            raise Decline(f"{node.name}: it divides by the padded channels")
        else:
            grow(name)
    grow(node.output[0])


class PadChannels(Pass):
    name = "pad_channels"
    exactness = Exactness.EXACT
    summary = "pad a Conv's output channels with zero filters up to a multiple of P"
    params = (Param("multiple", int, 32, "the parallelism factor P to align to"),)

    def check_params(self, params: dict[str, Any]) -> None:
        if params["multiple"] < 2:
            raise PassError(f"{self.name}: 'multiple' must be at least 2, got {params['multiple']}")

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        multiple = params["multiple"]
        for conv in model.nodes:
            if conv.op_type != "Conv" or model.attr(conv, "group", 1) != 1:
                continue
            channels = (model.declared_shape(conv.input[1]) or (None,))[0]
            if not isinstance(channels, int) or channels % multiple == 0:
                continue
            pad = -channels % multiple
            try:
                plan = plan_padding(model, conv, pad)
            except Decline as reason:
                yield self.decline(conv.name, str(reason))
                continue
            yield self.site(conv.name, plan.nodes, {"multiple": multiple},
                            summary=f"{channels} -> {channels + pad} channels; widens {len(plan.sources)} "
                                    f"conv(s), zero-pads {len(plan.sinks)} consumer(s)")

    def rewrite(self, model: Model, site: Site, calib=None) -> Model:
        conv = model.node(site.anchor)
        channels = model.declared_shape(conv.input[1])[0]
        plan = plan_padding(model, conv, -channels % site.param_dict["multiple"])
        graph = model.to_graphsurgeon()
        nodes = nodes_by_name(graph)
        pad = plan.pad
        for name in plan.sources:  # zero output filters (ConvTranspose keeps outputs on axis 1)
            node = nodes[name]
            axis = 1 if node.op == "ConvTranspose" else 0
            _pad_input(graph, node, 1, axis, pad, 0.0, "weight_padded")
            if constant_input(node, 2) is not None:
                _pad_input(graph, node, 2, 0, pad, 0.0, "bias_padded")
        for name, rows in plan.sinks.items():  # zero input weights
            node = nodes[name]
            if node.op == "Conv":
                axis = 1
            elif node.op == "Gemm" and node.attrs.get("transB", 0):
                axis = 1
            else:  # ConvTranspose [Cin, Cout, ...], MatMul and Gemm B [K, N]
                axis = 0
            _pad_input(graph, node, 1, axis, rows, 0.0, "weight_padded")
        for name in plan.depthwise:
            node = nodes[name]
            _pad_input(graph, node, 1, 0, pad, 0.0, "weight_padded")
            if constant_input(node, 2) is not None:
                _pad_input(graph, node, 2, 0, pad, 0.0, "bias_padded")
            node.attrs["group"] = int(node.attrs["group"]) + pad
        for (name, index), (axis, fill) in plan.constants.items():
            _pad_input(graph, nodes[name], index, axis, pad, fill, f"in{index}_padded")
        for name, shape in plan.reshape_shapes.items():
            set_constant_input(graph, nodes[name], 1, shape, "shape_padded")
        return model.from_graphsurgeon(graph)


def _pad_input(graph, node, index: int, axis: int, count: int, fill: float, suffix: str) -> None:
    value = constant_input(node, index)
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, count)
    set_constant_input(graph, node, index, np.pad(value, widths, constant_values=fill), suffix)
