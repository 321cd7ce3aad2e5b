"""Editing a channel group: one walk over its roles, with the edit (pad or keep) as the argument.

`channel_groups.plan_group` finds every op whose channel axis changes with an
anchor conv's output channels and sorts them into roles. An edit says what
happens along one channel axis: `Pad(added)` appends `added` channels of a
fill value (zero filters, or an op's neutral constant), `Keep(channels)`
keeps those channels in their order. `edit_group` applies one edit to every
role of the group:
- sources: output filters and bias;
- sinks: input weight rows (`rows_per_channel` per channel, channel-major);
- depthwise convs: filters, bias and `group`;
- per-channel constants: along their channel axis (padding with the op's neutral value);
- flattening Reshapes: the target shape.
pad_channels pads with it; align_channels and scale_depth keep with it, and
write their refitted consumers' weights themselves (`written`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from ..ir import Model
from .channel_groups import ChannelGroup, flattened_shape, sink_weight_axis, source_weight_axis, weight_rows
from .node_edits import Edit, SetAttribute, SetConstant, Written, apply_edits, constant_value

WriteWeights = Callable[[gs.Graph, gs.Node], None]


class ChannelEdit(ABC):
    suffix: ClassVar[str]  # names the new constants: weight_<suffix>

    @abstractmethod
    def count(self, channels: int) -> int:
        """How many channels a tensor of the group has after the edit."""

    @abstractmethod
    def along(self, value: np.ndarray, axis: int, fill: float = 0.0, per_channel: int = 1) -> np.ndarray:
        """`value` edited along `axis`, where each channel owns `per_channel` consecutive entries."""


@dataclass(frozen=True)
class Pad(ChannelEdit):
    added: int
    suffix = "padded"

    def count(self, channels: int) -> int:
        return channels + self.added

    def along(self, value: np.ndarray, axis: int, fill: float = 0.0, per_channel: int = 1) -> np.ndarray:
        # What np.pad(constant_values=fill) gives, without its per-call overhead (a preview pads a dozen
        # small constants: np.pad was most of planning one).
        shape = list(value.shape)
        shape[axis] = self.added * per_channel
        return np.concatenate([value, np.full(shape, fill, dtype=value.dtype)], axis=axis)


@dataclass(frozen=True, eq=False)
class Keep(ChannelEdit):
    channels: np.ndarray  # the kept channel indices, ascending
    suffix = "narrowed"

    def count(self, channels: int) -> int:
        return len(self.channels)

    def along(self, value: np.ndarray, axis: int, fill: float = 0.0, per_channel: int = 1) -> np.ndarray:
        return np.take(value, weight_rows(self.channels, per_channel), axis=axis)


def edit_group(model: Model, group: ChannelGroup, edit: ChannelEdit,
               written: Mapping[str, WriteWeights] | None = None) -> Model:
    """`model` with `edit` applied to every role of `group` (found on `model`); the sources and
    sinks named in `written` get their weights from those functions instead."""
    return apply_edits(model, edit_plan(model, group, edit, written))


def edit_plan(model: Model, group: ChannelGroup, edit: ChannelEdit,
              written: Mapping[str, WriteWeights] | None = None) -> list[Edit]:
    """`edit_group`'s edits of `model`, in the order they are applied (which names the new constants)."""
    written = written or {}
    suffix = edit.suffix
    plan: list[Edit] = []
    for name in sorted(group.sources | set(group.sinks)):
        node = model.node(name)
        if name in written:
            plan.append(Written(name, written[name]))
            continue
        weight, bias = constant_value(model, node, 1), constant_value(model, node, 2)
        if name in group.sources:  # a conv inside a residual stage is a source and a sink
            weight = edit.along(weight, source_weight_axis(node.op_type))
            if bias is not None:
                plan.append(SetConstant(name, 2, edit.along(bias, 0), f"bias_{suffix}"))
        if name in group.sinks:
            transposed = {"transB": model.attr(node, "transB", 0)}
            weight = edit.along(weight, sink_weight_axis(node.op_type, transposed), per_channel=group.sinks[name])
        plan.append(SetConstant(name, 1, weight, f"weight_{suffix}"))
    for name in sorted(group.depthwise):
        node = model.node(name)
        plan.append(SetConstant(name, 1, edit.along(constant_value(model, node, 1), 0), f"weight_{suffix}"))
        bias = constant_value(model, node, 2)
        if bias is not None:
            plan.append(SetConstant(name, 2, edit.along(bias, 0), f"bias_{suffix}"))
        plan.append(SetAttribute(name, "group", edit.count(int(model.attr(node, "group", 1)))))
    for (name, index), (axis, fill) in sorted(group.constants.items()):
        value = constant_value(model, model.node(name), index)
        plan.append(SetConstant(name, index, edit.along(value, axis, fill), f"in{index}_{suffix}"))
    delta = edit.count(group.channels) - group.channels
    for name, tensor in sorted(group.reshapes.items()):
        plan.append(SetConstant(name, 1, flattened_shape(model, model.node(name), tensor, delta), f"shape_{suffix}"))
    return plan
