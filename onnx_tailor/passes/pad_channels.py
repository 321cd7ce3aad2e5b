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

The group is found by `channel_groups.plan_group`, which align_channels and
scale_depth share (they remove channels from the same kind of group).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..errors import PassError
from ..ir import Model
from .base import Declined, Exactness, Param, Pass, Site
from .channel_groups import Decline, dense_convs, flattened_shape, plan_group, sink_weight_axis, source_weight_axis
from .graph_edit import constant_input, nodes_by_name, set_constant_input


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
        for conv, channels in dense_convs(model):
            if channels is None or channels % multiple == 0:
                continue
            pad = -channels % multiple
            try:
                plan = plan_group(model, conv)
            except Decline as reason:
                yield self.decline(conv.name, str(reason))
                continue
            yield self.site(conv.name, plan.nodes, {"multiple": multiple},
                            summary=f"{channels} -> {channels + pad} channels; widens {len(plan.sources)} "
                                    f"conv(s), zero-pads {len(plan.sinks)} consumer(s)")

    def rewrite(self, model: Model, site: Site, calib=None) -> Model:
        conv = model.node(site.anchor)
        channels = model.declared_shape(conv.input[1])[0]
        pad = -channels % site.param_dict["multiple"]
        plan = plan_group(model, conv)
        graph = model.to_graphsurgeon()
        nodes = nodes_by_name(graph)
        for name in plan.sources:  # zero output filters (ConvTranspose keeps outputs on axis 1)
            node = nodes[name]
            _pad_input(graph, node, 1, source_weight_axis(node.op), pad, 0.0, "weight_padded")
            if constant_input(node, 2) is not None:
                _pad_input(graph, node, 2, 0, pad, 0.0, "bias_padded")
        for name, rows_per_channel in plan.sinks.items():  # zero input weights
            node = nodes[name]
            _pad_input(graph, node, 1, sink_weight_axis(node.op, node.attrs), pad * rows_per_channel, 0.0,
                       "weight_padded")
        for name in plan.depthwise:
            node = nodes[name]
            _pad_input(graph, node, 1, 0, pad, 0.0, "weight_padded")
            if constant_input(node, 2) is not None:
                _pad_input(graph, node, 2, 0, pad, 0.0, "bias_padded")
            node.attrs["group"] = int(node.attrs["group"]) + pad
        for (name, index), (axis, fill) in plan.constants.items():
            _pad_input(graph, nodes[name], index, axis, pad, fill, f"in{index}_padded")
        for name, tensor in plan.reshapes.items():
            set_constant_input(graph, nodes[name], 1, flattened_shape(model, model.node(name), tensor, pad),
                               "shape_padded")
        return model.from_graphsurgeon(graph)


def _pad_input(graph, node, index: int, axis: int, count: int, fill: float, suffix: str) -> None:
    value = constant_input(node, index)
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, count)
    set_constant_input(graph, node, index, np.pad(value, widths, constant_values=fill), suffix)
