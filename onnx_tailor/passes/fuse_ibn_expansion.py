"""fuse_ibn_expansion: expand 1x1 conv + depthwise KxK conv become one KxK conv.

Before:  x -> Conv 1x1 (We: [Ce, Ci], be) -> act -> Conv KxK depthwise, stride s (Wd: [Ce, 1, K, K], bd) -> y
After:   x -> Conv KxK, stride s (Wf: [Ce, Ci, K, K], bf) -> y
(the depthwise conv's own activation, the SE branch, projection and
residual stay as they are)

`init=compose` (the only init so far) takes the product of the two kernels:

    Wf[o, i] = Wd[o, 0] * We[o, i]        bf[o] = bd[o] + be[o] * sum(Wd[o])

which is exact only without the activation in between and away from the
borders (the original zero-pads the *expanded* features, bias included).
So the pass is lossy: every application reports its local error, the
relative L2 error of the block's depthwise output on calibration inputs.

On an accelerator whose MAC array idles during depthwise convs and whose
SRAM cannot hold the expanded tensor, the fused conv is much faster in early
layers; in late layers its KxK x Ci x Ce weights make it slower. The cost
model decides where; this pass only rewrites.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import find_ibn_blocks
from ..errors import PassError
from ..ir import Model
from .base import Declined, Exactness, Param, Pass, Site
from .graph_edit import constant_input, fresh_name, nodes_by_name

INITS = ("compose",)


class FuseIbnExpansion(Pass):
    name = "fuse_ibn_expansion"
    exactness = Exactness.LOSSY
    summary = "fuse an IBN block's 1x1 expand conv and KxK depthwise conv into one KxK conv"
    params = (Param("init", str, "compose", "how the fused weights are made: compose (product of the kernels)"),)

    def check_params(self, params: dict[str, Any]) -> None:
        if params["init"] not in INITS:
            raise PassError(f"{self.name}: init must be one of {', '.join(INITS)}, got '{params['init']}'")

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        for block in find_ibn_blocks(model):
            expand, depthwise = model.node(block.expand), model.node(block.depthwise)
            dilations = model.attr(depthwise, "dilations", [1, 1])
            if any(d != 1 for d in dilations):
                yield self.decline(block.expand, f"{block.depthwise} is dilated")
                continue
            if not (model.is_constant(expand.input[1]) and model.is_constant(depthwise.input[1])):
                yield self.decline(block.expand, "the conv weights are not constant")
                continue
            between = _between(model, block.expand, block.depthwise)
            yield self.site(block.expand, {block.expand, block.depthwise, *between},
                            {"init": params["init"]},
                            summary=f"{block.in_channels}->{block.expanded_channels} 1x1 + {block.kernel[0]}x"
                                    f"{block.kernel[1]} depthwise -> one {block.kernel[0]}x{block.kernel[1]} conv "
                                    f"({block.expand_activation} dropped)")

    def output_tensor(self, model: Model, site: Site) -> str:
        """The tensor whose change is the site's local error: the depthwise output."""
        depthwise = next(n for n in site.nodes if model.node(n).op_type == "Conv" and n != site.anchor
                         and model.attr(model.node(n), "group", 1) > 1)
        return model.node(depthwise).output[0]

    def rewrite(self, model: Model, site: Site, calib=None) -> Model:
        graph = model.to_graphsurgeon()
        nodes = nodes_by_name(graph)
        expand = nodes[site.anchor]
        depthwise = nodes[next(n for n in site.nodes if n != site.anchor and nodes[n].op == "Conv")]
        w_e, w_d = constant_input(expand, 1), constant_input(depthwise, 1)
        b_e = constant_input(expand, 2)
        b_d = constant_input(depthwise, 2)
        ce = w_e.shape[0]
        b_e = np.zeros(ce, w_e.dtype) if b_e is None else b_e
        b_d = np.zeros(ce, w_e.dtype) if b_d is None else b_d
        fused_w = (w_d[:, 0][:, None] * w_e[:, :, 0, 0][:, :, None, None]).astype(w_e.dtype)  # [Ce, Ci, K, K]
        fused_b = (b_d + b_e * w_d.reshape(ce, -1).sum(axis=1)).astype(w_e.dtype)
        fused = gs.Node("Conv", name=fresh_name(graph, f"{expand.name}_fused"),
                        attrs={k: v for k, v in depthwise.attrs.items() if k != "group"} | {"group": 1},
                        inputs=[expand.inputs[0],
                                gs.Constant(fresh_name(graph, f"{expand.name}.weight_fused"), fused_w),
                                gs.Constant(fresh_name(graph, f"{expand.name}.bias_fused"), fused_b)],
                        outputs=list(depthwise.outputs))
        depthwise.outputs.clear()
        graph.nodes.append(fused)
        return model.from_graphsurgeon(graph)


def _between(model: Model, expand: str, depthwise: str) -> set[str]:
    """Nodes on the paths from the expand conv's output to the depthwise conv (the activation)."""
    target = model.node(depthwise).input[0]
    found, frontier = set(), [target]
    while frontier:
        node = model.producer(frontier.pop())
        if node is None or node.name == expand or node.name in found:
            continue
        found.add(node.name)
        frontier.extend(i for i in node.input if i and not model.is_constant(i))
    return found
