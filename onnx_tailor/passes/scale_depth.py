"""scale_depth: a depth (width) multiplier: narrow an IBN block's expansion to alpha * C, aligned to P.

Before:  x -> Conv 1x1 (We: [C, Ci]) -> act -> depthwise KxK (Wd: [C, 1, K, K]) -> act -> [SE]
           -> Conv 1x1 (Wp: [Co, C], bp) -> y
After:   x -> Conv 1x1 (We[K]) -> act -> depthwise KxK (Wd[K], group C') -> act -> [SE on K]
           -> Conv 1x1 (Wp': [Co, C'], bp') -> y'

    C'       = max(P, round(alpha * C / P) * P)       (P: `multiple`; only when C' < C)
    K        = the C' expanded channels kept, chosen by `importance` (as in align_channels)
    Wp', bp' = least-squares refit of the projection (ridge towards Wp[:, K]) so that
               y' matches the original block's projection output on calibration data

This is the "depth multiplier" of the NAS search space in
accelerator-aware-nas.txt, applied to a trained network without retraining:
the expansion is the widest tensor of a block, so its width sets most of the
block's MACs and its activation memory. One site per IBN block, anchored at
the expand conv; applying every site is the whole-model multiplier (the
driver applies them in graph order, so each block is fitted on activations
of the network with the earlier blocks already narrowed).

It is align_channels' machinery (`channel_removal.remove_channels`) with a
different target width, restricted to the expansion: the channel group of the
expand conv's output must stay inside the block. Sources may be the expand
conv and the squeeze-excitation expand conv; consumers the projection and the
SE reduce conv (refitted first, then the projection on the refitted gate);
the depthwise conv narrows with them. Anything else declines the block, naming
the node. alpha = 1 never removes a channel: with P = 1 (or any P) every
block is declined ("nothing to remove"), so the pass finds no site.

Lossy: the local error is the relative change of the projection conv's output
(before any residual Add, which would dilute it with the unchanged skip).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from ..analysis import IBNBlock, find_ibn_blocks
from ..ir import Model
from .base import MAX_MULTIPLE, Declined, Exactness, Param, Pass, Site
from .channel_groups import ChannelGroup, Decline, plan_group
from .channel_removal import REMOVAL_PARAMS, remove_channels


def scaled_width(channels: int, alpha: float, multiple: int) -> int:
    """alpha * channels rounded to the nearest multiple of P (half up), and at least P."""
    return max(multiple, math.floor(alpha * channels / multiple + 0.5) * multiple)


@dataclass(frozen=True)
class NarrowedExpansion:
    """A scale_depth site's match: the block, its expansion's channel group, and the new width."""

    block: IBNBlock
    group: ChannelGroup
    width: int


class ScaleDepth(Pass):
    name = "scale_depth"
    exactness = Exactness.LOSSY
    summary = "narrow an IBN block's expansion to alpha x its width, aligned to P, refitting the projection"
    params = (
        Param("alpha", float, 0.75, "the width multiplier", above=0.0, at_most=1.0),
        Param("multiple", int, 8, "the parallelism factor P the new width is a multiple of", at_least=1,
              at_most=MAX_MULTIPLE),
    ) + REMOVAL_PARAMS

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        for block in find_ibn_blocks(model):
            channels = block.expanded_channels
            target = scaled_width(channels, params["alpha"], params["multiple"])
            if target >= channels:
                yield self.decline(block.expand, f"alpha {params['alpha']:g} x {channels} channels aligned to "
                                                 f"{params['multiple']} is {target}: nothing to remove")
                continue
            try:
                group = plan_group(model, model.node(block.expand), removing=True)
            except Decline as reason:
                yield self.decline(block.expand, f"the expansion cannot be narrowed: {reason}")
                continue
            unexpected = _outside_block(group, block)
            if unexpected:
                yield self.decline(block.expand, f"the expanded channels also reach {unexpected}, outside the block")
                continue
            yield self.site(block.expand, group.nodes, params, match=NarrowedExpansion(block, group, target),
                            summary=f"expansion {channels} -> {target} channels "
                                    f"(alpha {params['alpha']:g}, P {params['multiple']}); refits the projection"
                                    + (" and the SE reduce conv" if block.squeeze_excitation else ""))

    def output_tensor(self, model: Model, site: Site) -> str:
        """The projection conv's output (see the module docstring)."""
        return model.node(site.match.block.project).output[0]

    def preview(self, model: Model, site: Site) -> Model:
        """The narrowed graph without the data-aware choice and refit (same shapes, cheap)."""
        return remove_channels(model, site.match.group, site.match.width, "first", "none")

    def rewrite(self, model: Model, site: Site, calib=None, reference: Model | None = None) -> Model:
        params = site.param_dict
        return remove_channels(model, site.match.group, site.match.width, params["importance"],
                               params["refit"], params["ridge"], calib, reference)


def _outside_block(group: ChannelGroup, block: IBNBlock) -> str:
    """The first op of the group that plays a role the block does not explain, as 'name (role)'."""
    se = set(block.squeeze_excitation)
    roles = [("producer", sorted(group.sources - {block.expand} - se)),
             ("consumer", sorted(set(group.sinks) - {block.project} - se)),
             ("depthwise conv", sorted(group.depthwise - {block.depthwise}))]
    for role, names in roles:
        if names:
            return f"{names[0]} (a {role})"
    return ""
