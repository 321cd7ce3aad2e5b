"""densify_depthwise: turn a depthwise (or grouped) Conv into a standard Conv.

Before:  Conv(group=g, W: [Co, Ci/g, Kh, Kw])
After:   Conv(group=1, W': [Co, Ci, Kh, Kw]), W' block-diagonal:

    W'[o, j] = W[o, j - (o // (Co/g)) * (Ci/g)]   if j lies in output o's group
             = 0                                   otherwise

This is the "swap convolutions" rewrite: on an accelerator whose MAC array is
idle during depthwise convs (they run on a narrow vector unit), a dense conv
with mostly-zero weights can be faster. Exact: the zero blocks add nothing.
Conditions: group > 1 and constant weights.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..ir import Model
from .base import Declined, Exactness, Pass, Site
from .node_edits import SetAttribute, SetConstant, apply_edits, stand_in


class DensifyDepthwise(Pass):
    name = "densify_depthwise"
    exactness = Exactness.EXACT
    summary = "make a depthwise or grouped Conv a standard Conv with block-diagonal weights"

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        for conv in model.nodes:
            if conv.op_type != "Conv" or model.attr(conv, "group", 1) == 1:
                continue
            if not model.is_constant(conv.input[1]):
                yield self.decline(conv.name, "its weights are computed at run time, not a constant")
                continue
            groups = model.attr(conv, "group")
            shape = model.declared_shape(conv.input[1])
            yield self.site(conv.name, {conv.name},
                            summary=f"group {groups} -> 1, weights {shape[1]} -> {shape[1] * groups} input channels")

    def rewrite(self, model: Model, site: Site, calib=None, reference: Model | None = None) -> Model:
        conv = model.node(site.anchor)
        groups = int(model.attr(conv, "group"))
        weight = model.constant(conv.input[1])
        out_channels, in_per_group = weight.shape[:2]
        out_per_group = out_channels // groups
        shape = (out_channels, in_per_group * groups) + weight.shape[2:]
        dense = stand_in(model, shape, weight.dtype)
        if dense is None:
            dense = np.zeros(shape, dtype=weight.dtype)
            # Group g's filters on its own block of input channels, all groups in one assignment: viewed as
            # [group, out per group, group, in per group, *kernel], the blocks are the entries [g, :, g, :].
            blocks = dense.reshape((groups, out_per_group, groups, in_per_group) + weight.shape[2:])
            diagonal = np.arange(groups)
            blocks[diagonal, :, diagonal] = weight.reshape((groups, out_per_group, in_per_group) + weight.shape[2:])
        # Edits that keep the wiring: a sketch's preview edits its proto directly (`node_edits`).
        return apply_edits(model, [SetConstant(site.anchor, 1, dense, "weight_dense"),
                                   SetAttribute(site.anchor, "group", 1)])
