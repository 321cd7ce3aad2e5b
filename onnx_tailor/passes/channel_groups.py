"""Channel groups: every tensor and op whose channel axis changes with one Conv's output channels.

Changing how many output channels a Conv has (pad_channels adds zero filters,
align_channels and scale_depth remove filters) changes every tensor those
channels flow into, and every tensor they are added to or multiplied with.
`plan_group` follows the anchor conv's output forwards and backwards to the
closed group of such tensors and sorts the ops it meets into roles:

- sources: standard Convs/ConvTransposes that produce a group tensor; their
  output filters change (a residual Add pulls its other input's producer in,
  so a residual stage is one group);
- sinks: standard Convs, ConvTransposes, and Gemm/MatMul behind a Flatten (or
  a Reshape to (N, C*H*W)) that read a group tensor; their input weights change
  (`sinks[name]` is the number of weight rows per channel: 1 for a Conv, H*W
  for flattened features, which are laid out channel-major);
- depthwise Convs carry the group through (their filters and `group` change);
- activations, BatchNormalization, pooling and Resize carry it through (their
  per-channel constants change: `constants[(node, input)] = (axis, fill)`);
- an elementwise op with a second full-channel input (residual Add, the Mul
  of a squeeze-excitation gate or of a decomposed HardSwish) pulls that input
  into the group; per-channel constant inputs change with it.
Anything else (a graph output, a reshape, a grouped conv, ...) raises
`Decline` naming the node that stops the group.

Channel index c means the same channel in every tensor of the group, so one
set of kept (or one run of new) channels applies to all of them. Padding and
removal differ in two places, chosen by `removing`: padding can pass a
channel Concat when the group tensor is its last input (new channels land at
the end), removal cannot (the kept channels would move); and padding must not
divide by a group tensor (the new channels are zero), removal may.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..analysis import is_depthwise
from ..ir import Model

# Ops that map channel c of their first input to channel c of their output, and
# stay finite on any finite input (so unread padded values never turn to NaN).
CHANNELWISE = {
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Tanh", "Elu", "Selu",
    "Softplus", "Neg", "Abs", "Identity", "Erf", "Gelu", "BatchNormalization",
    "GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "Resize", "Upsample",
}
BINARY = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0, "Max": 0.0, "Min": 0.0}  # op -> neutral pad value
# Per-channel parameters of channelwise ops: (input index, pad value).
CHANNEL_PARAMS = {"BatchNormalization": ((1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0)), "PRelu": ((1, 0.0),)}


class Decline(Exception):
    """The group cannot be changed; the message says which node stops it."""


@dataclass
class ChannelGroup:
    """Everything that changes with the anchor's output channels, found by `plan_group`."""

    anchor: str
    channels: int | None  # the anchor's output channels (every group tensor has as many), when known
    tensors: set[str] = field(default_factory=set)  # tensors whose channel axis changes
    sources: set[str] = field(default_factory=set)  # Conv/ConvTranspose whose output filters change
    sinks: dict[str, int] = field(default_factory=dict)  # node -> weight rows per group channel
    depthwise: set[str] = field(default_factory=set)  # depthwise Convs that change with the group
    constants: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)  # (node, input) -> (axis, fill)
    reshapes: dict[str, str] = field(default_factory=dict)  # flattening Reshape -> the group tensor it flattens
    nodes: set[str] = field(default_factory=set)

    def ordered_sinks(self, model: Model) -> list[str]:
        """The sinks in the model's (topological) node order."""
        return [n.name for n in model.nodes if n.name in self.sinks]


def plan_group(model: Model, anchor: onnx.NodeProto, removing: bool = False) -> ChannelGroup:
    """Close the group of tensors whose channels change with `anchor`'s output; raise Decline if it cannot."""
    word = "removed" if removing else "padded"
    weight_shape = model.declared_shape(anchor.input[1]) or (None,)
    channels = weight_shape[1] if anchor.op_type == "ConvTranspose" and len(weight_shape) > 1 else weight_shape[0]
    group = ChannelGroup(anchor.name, channels if isinstance(channels, int) else None)
    walk = _Walk(model, group, removing, word)
    group.nodes.add(anchor.name)
    group.sources.add(anchor.name)
    walk.pending.append(anchor.output[0])
    seen_edges: set[tuple[str, str]] = set()

    while walk.pending:
        tensor = walk.pending.pop()
        group.tensors.add(tensor)
        if model.is_graph_output(tensor):
            raise Decline(f"the {word} channels would reach graph output '{tensor}'")
        producer = model.producer(tensor)
        if producer is None:
            raise Decline(f"the {word} group reaches graph input '{tensor}'")
        if (producer.name, tensor) not in seen_edges:
            seen_edges.add((producer.name, tensor))
            walk.producer(producer)
        for consumer in model.consumers(tensor):
            if (consumer.name, tensor) not in seen_edges:
                seen_edges.add((consumer.name, tensor))
                walk.consumer(consumer, tensor)
    if removing:
        walk.check_channel_counts()
    return group


def flattened_shape(model: Model, node: onnx.NodeProto, tensor: str, delta: int = 0) -> np.ndarray | None:
    """For a Reshape that flattens NCHW `tensor` to (N, C*H*W) by a constant shape: that shape
    for C + `delta` channels; None for any other Reshape."""
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
    return np.array([target[0], (channels + delta) * math.prod(spatial)], dtype=target.dtype)


def weight_rows(channels: np.ndarray, rows_per_channel: int) -> np.ndarray:
    """Indices of the weight rows that read `channels` (channel-major features: c*rows .. c*rows + rows-1)."""
    channels = np.asarray(channels, dtype=np.int64)
    return (channels[:, None] * rows_per_channel + np.arange(rows_per_channel)[None, :]).reshape(-1)


def sink_weight_axis(op: str, attrs: dict) -> int:
    """The axis of a sink's weight (input 1) that indexes its input features."""
    if op == "Conv":
        return 1
    if op == "Gemm" and attrs.get("transB", 0):
        return 1
    return 0  # ConvTranspose [Cin, Cout, ...], MatMul and Gemm B [K, N]


def source_weight_axis(op: str) -> int:
    """The axis of a source's weight that indexes its output channels."""
    return 1 if op == "ConvTranspose" else 0


class _Walk:
    """The rules that sort each node the group meets into its role."""

    def __init__(self, model: Model, group: ChannelGroup, removing: bool, word: str):
        self.model, self.group, self.removing, self.word = model, group, removing, word
        self.pending: list[str] = []

    def grow(self, tensor: str) -> None:
        if tensor not in self.group.tensors:
            self.group.tensors.add(tensor)
            self.pending.append(tensor)

    def producer(self, node: onnx.NodeProto) -> None:
        """`node` produces a tensor of the group: it must produce the changed channels."""
        model, group = self.model, self.group
        group.nodes.add(node.name)
        op = node.op_type
        if op in ("Conv", "ConvTranspose") and model.attr(node, "group", 1) == 1:
            if not model.is_constant(node.input[1]):
                raise Decline(f"{node.name}: its weights are not constant")
            group.sources.add(node.name)
        elif op == "Conv" and is_depthwise(model, node):
            self.add_depthwise(node)
            self.grow(node.input[0])
        elif op in CHANNELWISE:
            self.channel_params(node)
            self.grow(node.input[0])
        elif op in BINARY:
            self.join_binary(node)
        elif op == "Concat" and self.is_channel_concat(node) and not self.removing:
            self.grow(node.input[-1])
        else:
            verb = "narrowed" if self.removing else "widened"
            raise Decline(f"{node.name} ({op}) produces a tensor of the group and cannot be {verb}")

    def consumer(self, node: onnx.NodeProto, tensor: str) -> None:
        """`node` reads a group tensor: carry the change through, or absorb it in its input weights."""
        model, group, word = self.model, self.group, self.word
        group.nodes.add(node.name)
        op = node.op_type
        if tensor not in node.input:  # `Model.consumers` counts readers inside subgraphs as their node
            raise Decline(f"{node.name} ({op}) reads the {word} channels inside its subgraph")
        if op == "Conv" and model.attr(node, "group", 1) == 1 and node.input[0] == tensor:
            self.add_sink(node, 1)
        elif op == "Conv" and node.input[0] == tensor and is_depthwise(model, node):
            self.add_depthwise(node)
            self.grow(node.output[0])
        elif op == "Conv" and node.input[0] == tensor:
            raise Decline(f"{node.name}: a grouped Conv (group {model.attr(node, 'group')}) reads the {word} channels")
        elif op == "ConvTranspose" and model.attr(node, "group", 1) == 1 and node.input[0] == tensor:
            self.add_sink(node, 1)
        elif op in CHANNELWISE and node.input[0] == tensor:
            if op == "Resize" and len(node.input) > 3 and node.input[3]:
                raise Decline(f"{node.name}: Resize to explicit sizes fixes the channel count")
            self.channel_params(node)
            self.grow(node.output[0])
        elif op in BINARY:
            self.join_binary(node)
        elif op == "Concat" and self.is_channel_concat(node) and self.removing:
            raise Decline(f"{node.name}: removing channels through a channel Concat is not supported")
        elif op == "Concat" and self.is_channel_concat(node) and node.input[-1] == tensor:
            self.grow(node.output[0])
        elif op == "Concat" and self.is_channel_concat(node):
            raise Decline(f"{node.name}: the {word} tensor is not the last input of a channel Concat")
        elif op == "Flatten" and model.attr(node, "axis", 1) == 1:
            self.flatten_into_matmul(node, tensor)
        elif op == "Reshape" and node.input[0] == tensor and flattened_shape(model, node, tensor) is not None:
            group.reshapes[node.name] = tensor
            self.flatten_into_matmul(node, tensor)
        elif op in ("Gemm", "MatMul") and node.input[0] == tensor and len(model.declared_shape(tensor) or ()) == 2:
            self.add_sink(node, 1)
        else:
            raise Decline(f"{node.name} ({op}) reads the {word} channels and cannot carry them")

    def flatten_into_matmul(self, node: onnx.NodeProto, tensor: str) -> None:
        """NCHW -> (N, C*H*W): channel c owns features c*H*W .. (c+1)*H*W - 1 of the
        flattened tensor, so the matrix that reads it changes H*W rows per channel."""
        model, group = self.model, self.group
        shape = model.declared_shape(tensor) or ()
        spatial = shape[2:]
        if len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in spatial):
            raise Decline(f"{node.name}: flattening a tensor whose spatial size is unknown")
        readers = model.consumers(node.output[0])
        if not readers or model.is_graph_output(node.output[0]):
            raise Decline(f"{node.name}: the flattened {self.word} tensor is a graph output")
        group.tensors.add(node.output[0])
        for reader in readers:
            group.nodes.add(reader.name)
            if reader.op_type not in ("Gemm", "MatMul") or reader.input[0] != node.output[0]:
                raise Decline(f"{reader.name} ({reader.op_type}) reads the flattened {self.word} channels")
            self.add_sink(reader, math.prod(spatial))

    def add_depthwise(self, node: onnx.NodeProto) -> None:
        if not self.model.is_constant(node.input[1]):
            raise Decline(f"{node.name}: its weights are not constant")
        self.group.depthwise.add(node.name)

    def add_sink(self, node: onnx.NodeProto, rows_per_channel: int) -> None:
        if not self.model.is_constant(node.input[1]):
            raise Decline(f"{node.name}: its weights are not constant")
        if node.op_type == "Gemm" and self.model.attr(node, "transA", 0):
            raise Decline(f"{node.name}: Gemm with transA")
        self.group.sinks[node.name] = rows_per_channel

    def is_channel_concat(self, node: onnx.NodeProto) -> bool:
        rank = len(self.model.declared_shape(node.output[0]) or ())
        axis = self.model.attr(node, "axis", 0)
        return rank > 1 and axis % rank == 1

    def channel_params(self, node: onnx.NodeProto) -> None:
        model = self.model
        for index, fill in CHANNEL_PARAMS.get(node.op_type, ()):
            name = node.input[index] if index < len(node.input) else ""
            if not name:
                continue
            if not model.is_constant(name):
                raise Decline(f"{node.name}: its per-channel parameter '{name}' is not constant")
            shape = model.declared_shape(name)
            if node.op_type == "PRelu" and (len(shape) == 0 or math.prod(shape) == 1):
                continue  # one shared slope: nothing per channel
            axis = 0 if node.op_type == "BatchNormalization" or len(shape) == 1 else len(shape) - 3
            self.group.constants[(node.name, index)] = (axis, fill)

    def join_binary(self, node: onnx.NodeProto) -> None:
        """Elementwise op in the group: per-channel constants change, full-channel inputs join the group."""
        model = self.model
        out_rank = len(model.declared_shape(node.output[0]) or ())
        if out_rank < 2:
            raise Decline(f"{node.name}: the rank of its output is unknown")
        for index, name in enumerate(node.input):
            if name in self.group.tensors:
                continue
            shape = model.declared_shape(name)
            if shape is None:
                raise Decline(f"{node.name}: the shape of its input '{name}' is unknown")
            axis = len(shape) - out_rank + 1  # where the channel axis of the output falls in this input
            if axis < 0 or shape[axis] == 1:
                continue  # broadcast along channels: nothing changes
            if model.is_constant(name):
                self.group.constants[(node.name, index)] = (axis, BINARY[node.op_type])
            elif node.op_type == "Div" and index == 1 and not self.removing:
                raise Decline(f"{node.name}: it divides by the {self.word} channels")
            else:
                self.grow(name)
        self.grow(node.output[0])

    def check_channel_counts(self) -> None:
        """Every group tensor must index the same channels as the anchor's output."""
        expected = self.group.channels
        for tensor in sorted(self.group.tensors):
            producer = self.model.producer(tensor)
            if producer.op_type == "Flatten" or producer.name in self.group.reshapes:
                continue  # flattened features: C*H*W wide, by construction
            shape = self.model.declared_shape(tensor) or ()
            found = shape[1] if len(shape) > 1 else None
            if expected is None or not isinstance(found, int) or found != expected:
                raise Decline(f"tensor '{tensor}' of the group has {found} channels, the anchor makes {expected}")


def dense_convs(model: Model):
    """Every standard (group 1) Conv, with its output channel count (None when unknown):
    the candidate anchors of the channel-group passes."""
    for conv in model.nodes:
        if conv.op_type == "Conv" and model.attr(conv, "group", 1) == 1:
            channels = (model.declared_shape(conv.input[1]) or (None,))[0]
            yield conv, channels if isinstance(channels, int) else None
