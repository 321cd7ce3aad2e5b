"""align_channels: remove a Conv's output channels down to a multiple of P, and refit its consumers.

Before:  x -> Conv(W: [C, Ci, k, k]) -> act -> Conv(V: [Co, C, kh, kw], b) -> y
After:   x -> Conv(W[K]: [C', Ci, k, k]) -> act -> Conv(V': [Co, C', kh, kw], b') -> y'

    C'     = floor(C / P) * P    (P: `multiple`, the target's parallelism factor)
    K      = the C' channels kept (in their original order), chosen by `importance`
    V', b' = argmin_{V, b} ||conv(x_K, V) + b - y||^2 + lambda ||V - V[:, K]||^2
             over calibration inputs: x_K are the kept channels as the rewritten
             network computes them, y is the consumer's output in the original
             network; lambda = `ridge` * mean diagonal of the (centred) Gram
             matrix of x_K's im2col features. A ridge that pulls towards the
             original weights rather than towards zero: as lambda grows the refit
             tends to "drop the channels and correct the bias", never to zero.

On an accelerator that computes P channels at once, C and ceil(C/P)*P
channels cost the same, so the C mod P channels over the last multiple are
paid as a whole extra pass; removing them saves that pass, where
pad_channels only makes the shape regular. Lossy: every application reports
its local error (see `output_tensor`).

The channels removed are removed from the whole channel group of the conv
(`channel_groups.plan_group`, the site's match): from every producer of a tensor the channels
reach (a residual Add joins two producers, a squeeze-excitation gate its
expand conv: all drop the same channels, so a residual stage is narrowed as
a whole), from per-channel constants, depthwise convs and `group`, from
flattening Reshapes, and from the input weights of every consumer that mixes
channels (standard Convs, Gemm/MatMul behind a Flatten). A channel Concat,
a graph output or any op that cannot carry the channels declines the site.

Which channels stay (`importance`: greedy backward elimination by default)
and how the consumers are refitted (`refit`) is `channel_removal`'s
machinery, shared with scale_depth; its docstring gives the choices.
Without calibration data it falls back to seeded random inputs, which real
data beats by far.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..ir import Model
from .base import MAX_MULTIPLE, Declined, Exactness, Param, Pass, Site
from .channel_groups import Decline, dense_convs, plan_group
from .channel_removal import REMOVAL_PARAMS, removal_summary, remove_channels


class AlignChannels(Pass):
    name = "align_channels"
    exactness = Exactness.LOSSY
    summary = "remove a Conv's output channels down to a multiple of P, refitting its consumers by least squares"
    params = (Param("multiple", int, 32, "the parallelism factor P to align down to", at_least=2,
                    at_most=MAX_MULTIPLE),) + REMOVAL_PARAMS

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        multiple = params["multiple"]
        for conv, channels in dense_convs(model):
            if channels is None:
                yield self.decline(conv.name, "its output channel count is unknown")
                continue
            keep = channels // multiple * multiple
            if channels % multiple == 0:
                yield self.decline(conv.name, f"{channels} channels are already a multiple of {multiple}")
                continue
            if keep == 0:
                yield self.decline(conv.name, f"aligning {channels} channels down to a multiple of {multiple} "
                                              f"would remove every channel (pad_channels aligns up)")
                continue
            try:
                group = plan_group(model, conv, removing=True)
            except Decline as reason:
                yield self.decline(conv.name, str(reason))
                continue
            yield self.site(conv.name, group.nodes, params, summary=removal_summary(group, keep), match=group)

    def output_tensor(self, model: Model, site: Site) -> str:
        """The local error is measured on the output of the group's last consumer in topological
        order (for an IBN expand conv: the projection conv's output; for a residual stage: the
        first consumer after the stage). Consumers of the group before it are also refitted, and in
        chains they feed it, but a group with parallel consumers is measured on the last one only."""
        return model.node(site.match.ordered_sinks(model)[-1]).output[0]

    def preview(self, model: Model, site: Site) -> Model:
        """The narrowed graph without the data-aware choice and refit (same shapes, cheap)."""
        return remove_channels(model, site.match, self._keep(site), "first", "none")

    def rewrite(self, model: Model, site: Site, calib=None, reference: Model | None = None) -> Model:
        params = site.param_dict
        return remove_channels(model, site.match, self._keep(site), params["importance"], params["refit"],
                               params["ridge"], calib, reference)

    @staticmethod
    def _keep(site: Site) -> int:
        multiple = site.param_dict["multiple"]
        return site.match.channels // multiple * multiple
