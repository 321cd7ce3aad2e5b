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

The group is found by `channel_groups.plan_group` (the site's match) and
edited by `channel_edit.edit_group`, which align_channels and scale_depth
share (they keep fewer channels of the same kind of group).
"""

from __future__ import annotations

from typing import Any, Iterable

from ..ir import Model
from .base import MAX_MULTIPLE, Declined, Exactness, Param, Pass, Site
from .channel_edit import Pad, edit_group
from .channel_groups import Decline, dense_convs, plan_group


class PadChannels(Pass):
    name = "pad_channels"
    exactness = Exactness.EXACT
    summary = "pad a Conv's output channels with zero filters up to a multiple of P"
    params = (Param("multiple", int, 32, "the parallelism factor P to align to", at_least=2,
                    at_most=MAX_MULTIPLE),)

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        multiple = params["multiple"]
        for conv, channels in dense_convs(model):
            if channels is None or channels % multiple == 0:
                continue
            pad = -channels % multiple
            try:
                group = plan_group(model, conv)
            except Decline as reason:
                yield self.decline(conv.name, str(reason))
                continue
            yield self.site(conv.name, group.nodes, {"multiple": multiple}, match=group,
                            summary=f"{channels} -> {channels + pad} channels; widens {len(group.sources)} "
                                    f"conv(s), zero-pads {len(group.sinks)} consumer(s)")

    def rewrite(self, model: Model, site: Site, calib=None, reference: Model | None = None) -> Model:
        group = site.match
        return edit_group(model, group, Pad(-group.channels % site.param_dict["multiple"]))
