"""fuse_ibn_expansion: expand 1x1 conv + depthwise KxK conv become one KxK conv.

Before:  x -> Conv 1x1 (We: [Ce, Ci], be) -> act -> Conv KxK depthwise, stride s (Wd: [Ce, 1, K, K], bd) -> y
After:   x -> Conv KxK, stride s (Wf: [Ce, Ci, K, K], bf) -> y
(the depthwise conv's own activation, the SE branch, projection and
residual stay as they are)

`init=compose` takes the product of the two kernels:

    Wf[o, i] = Wd[o, 0] * We[o, i]        bf[o] = bd[o] + be[o] * sum(Wd[o])

which is exact only without the activation in between and away from the
borders (the original zero-pads the *expanded* features, bias included); on
trained networks it is unusable. `init=lsq` (the default) fits instead, on
the calibration inputs, in two stages:
1. Wf, bf: ridge least squares of the fused conv's output against the
   original depthwise output, from the block's input (im2col rows);
2. the projection conv: ridge least squares so that the block's output (the
   projection) matches the original block's, from the projection's new input
   (after the fused conv, the activation and any squeeze-excitation).
Both stages read the model being rewritten, so applying the pass block after
block calibrates each block on the already-rewritten network (sequential
calibration), which keeps errors from compounding.
Every application reports its local error: the relative L2 error of the
block's projection output on calibration inputs.

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
from .capture import capture
from .graph_edit import constant_input, fresh_name, nodes_by_name, set_constant_input
from .least_squares import fit_conv

INITS = ("lsq", "compose")


class FuseIbnExpansion(Pass):
    name = "fuse_ibn_expansion"
    exactness = Exactness.LOSSY
    summary = "fuse an IBN block's 1x1 expand conv and KxK depthwise conv into one KxK conv"
    params = (Param("init", str, "lsq", "how the fused weights are made: lsq (two-stage least squares on "
                                        "calibration data) or compose (product of the kernels)"),)

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

    def preview(self, model: Model, site: Site) -> Model:
        return self._compose(model, site)  # same graph as lsq, without the fitting

    def output_tensor(self, model: Model, site: Site) -> str:
        """The tensor whose change is the site's local error: the block's projection output."""
        return model.node(_block(model, site).project).output[0]

    def rewrite(self, model: Model, site: Site, calib=None) -> Model:
        composed = self._compose(model, site)
        if site.param_dict["init"] == "compose":
            return composed
        block = _block(model, site)
        depthwise, project = model.node(block.depthwise), model.node(block.project)
        # Stage 1: the fused conv reproduces the depthwise output from the block input.
        seen = capture(model, [block.input, depthwise.output[0], project.output[0]], calib)
        attrs = _conv_geometry(model, depthwise)
        weight, bias = fit_conv(seen[block.input], seen[depthwise.output[0]], *attrs)
        fitted = _replace_weights(composed, _fused_name(composed, site), weight, bias)
        # Stage 2: the projection reproduces the original block output from its new input.
        new_input = capture(fitted, [project.input[0]], calib)[project.input[0]]
        weight, bias = fit_conv(new_input, seen[project.output[0]], (1, 1), (1, 1), (0, 0, 0, 0))
        return _replace_weights(fitted, block.project, weight, bias)

    def _compose(self, model: Model, site: Site) -> Model:
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


def _block(model: Model, site: Site):
    return next(b for b in find_ibn_blocks(model) if b.expand == site.anchor)


def _fused_name(model: Model, site: Site) -> str:
    return next(n.name for n in model.nodes if n.name.startswith(f"{site.anchor}_fused"))


def _conv_geometry(model: Model, conv) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    weight = model.declared_shape(conv.input[1])
    kernel = (weight[2], weight[3])
    strides = tuple(model.attr(conv, "strides", [1, 1]))
    pads = model.attr(conv, "pads", [0, 0, 0, 0])
    if model.attr(conv, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise PassError(f"{conv.name}: auto_pad is not supported by the least-squares fit")
    return kernel, strides, (pads[0], pads[1], pads[2], pads[3])


def _replace_weights(model: Model, conv_name: str, weight: np.ndarray, bias: np.ndarray) -> Model:
    graph = model.to_graphsurgeon()
    conv = nodes_by_name(graph)[conv_name]
    set_constant_input(graph, conv, 1, weight, "weight_fit")
    set_constant_input(graph, conv, 2, bias, "bias_fit")
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
