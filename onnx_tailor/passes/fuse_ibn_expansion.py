"""fuse_ibn_expansion: a 1x1 expand conv and the depthwise KxK conv it feeds become one KxK conv.

Before:  x -> Conv 1x1 (We: [Ce, Ci], be) -> act -> Conv KxK depthwise, stride s (Wd: [Ce, 1, K, K], bd) -> y
After:   x -> Conv KxK, stride s (Wf: [Ce, Ci, K, K], bf) -> y
(the depthwise conv's own activation, the SE branch, projection and
residual stay as they are)

Sites are the expand-depthwise pairs of `analysis.find_expand_depthwise_pairs`:
act is any activation chain (element-wise ops with constant operands), and
every tensor between the two convs has no other reader (a pair with one is
declined, naming the reader). The expand conv must read its input 1:1
(stride 1, no padding) and neither conv be dilated. Most pairs sit in an
IBN block (a 1x1 projection after the depthwise conv, its activation and
any SE); some do not (a depthwise conv feeding a pooling, a concat, or in
LCNet's dw -> pw -> dw chain a pw already fused with the dw after it):
these bare pairs get stage 1 below alone.

`init=compose` takes the product of the two kernels:

    Wf[o, i] = Wd[o, 0] * We[o, i]        bf[o] = bd[o] + be[o] * sum(Wd[o])

which is exact only without the activation in between and away from the
borders (the original zero-pads the *expanded* features, bias included); on
trained networks it is unusable. `init=lsq` (the default) fits instead, on
the calibration inputs, in two stages and, with `refine`, a third:
1. Wf, bf: ridge least squares of the fused conv's output against the
   reference's depthwise output (before its activation), from the expand
   conv's input (im2col rows). For a bare pair this is the whole fit: there
   is no projection to refit nor to refine towards, and `refine` is not
   applied (a refinement through the activation alone would need
   `passes.refine` to hold its second conv fixed; not done);
2. in an IBN block, the projection conv: ridge least squares so that the
   block's output (the projection) matches the reference block's, from the
   projection's new input (after the fused conv, the activation and any
   squeeze-excitation).
3. `refine=N` (N > 0): each stage fitted a linear layer alone; the block is
   not linear. N gradient steps (Adam, mini-batches of calibration samples in
   a seeded order; `passes.refine`) then move Wf, bf, Wp, bp together to

       minimize ||Wp (g * act(Wf * x + bf)) + bp - Y||^2 / ||Y||^2

   through the real activation act (the depthwise conv's, which the fused
   conv keeps; every chain `analysis.match_activation_chain` knows, followed
   node by node) and the squeeze-excitation gate g = se(mean(act(...))), whose own
   weights stay fixed. x is the block input as the (partially rewritten)
   network computes it, Y the reference block's projection output: the
   target of stage 2. Before refining, the numpy block is checked against
   onnxruntime on a few samples; after, the refined weights are kept only if
   they lowered that error on all the calibration data (and the steps stop
   at half of N when they have not lowered it by then). A block whose
   activation or SE numpy cannot follow (Elu, Gelu, PRelu, ...) keeps its
   stage-2 weights; its site's summary says so. `refine=0` is stages 1 and 2
   alone, byte for byte as before the parameter existed.
Every stage reads its inputs from the model being rewritten and aims at the
tensors of the reference model (`capture.capture_fit`: the model the
sequence of rewrites started from, in `optimize`, recipe replay and
`apply_pass`), so that applying the pass block after block calibrates each
block on the already-rewritten network towards the original's outputs
(sequential calibration): a block makes up for its predecessors' error
instead of compounding it.
With a `passes.fit_memo` active (inside a search), a block's final weights
are kept by the cone digests of what the fit reads and aims at: the same
block asked for again on a model whose upstream is unchanged gets them back
without fitting, the very bytes a fit would make.
Every application reports its local error: the relative L2 error of the
block's projection output on calibration inputs (for a bare pair, of the
depthwise conv's output, the tensor stage 1 fits).

The default refine=100 comes from bench/fusion_refinement.py (all 11 blocks of
the PaddleOCR text-direction classifier fused in turn; 500 calibration and
1500 test lines). Top-1 change against the original, 95% paired intervals,
when each block was fitted to the already-fused network's tensors: least
squares alone -1.53 points [-2.20, -0.93]; refine=100 +0.07 [-0.13, +0.33],
99.80% agreement; refine=300 +0.13 [-0.13, +0.40], 99.73%; 61 s, 106 s and 184
s for the 11 blocks. Since each block is fitted to the original model's own
block output (the `reference`), later blocks compensate for earlier ones, and
least squares alone gives -0.47 [-0.93, -0.07] (99.27% agreement), refine=100
+0.13 [+0.00, +0.33] (99.87% agreement; worst block's local error 0.40 ->
0.28), measured on a loaded machine by `python bench/accuracy_trust.py`. 100
is the smallest value measured that brings the fused classifier back within
noise of the original, at about 4 s a block (the steps' cost does not grow
with the calibration set); 300 lowered the local errors further without a
measurable top-1 gain, for three times the refinement time, which a search
that applies the pass to many candidates pays at each. `preview` never
refines. Recipes written before `refine` existed name no value for it, so they
now replay with the default; adding "refine": 0 to their fuse_ibn_expansion
steps replays them as written.

On an accelerator whose MAC array idles during depthwise convs and whose
SRAM cannot hold the expanded tensor, the fused conv is much faster in early
layers; in late layers its KxK x Ci x Ce weights make it slower. The cost
model decides where; this pass only rewrites.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from ..analysis import (ExpandDepthwisePair, IBNBlock, UnpairedExpand, find_ibn_blocks, match_activation_chain,
                        pair_ending_at)
from ..errors import PassError, VerificationError
from ..ir import Model
from ..ir.conv_geometry import ConvGeometry
from .base import Declined, Exactness, Param, Pass, Site
from .capture import capture, capture_fit
from .fit_memo import active_memo, fit_key
from .graph_edit import nodes_by_name, set_constant_input
from .node_edits import AddNode, NewTensor, apply_edits, constant_value, plain_attributes
from .least_squares import fit_conv
from .local_error import relative_error
from .refine import ConvPair, Elementwise, SqueezeExcitation

DEFAULT_REFINE = 100  # chosen by bench/fusion_refinement.py: see the module docstring
CHECKED_SAMPLES = 4  # calibration samples on which the numpy block is checked against onnxruntime


@dataclass(frozen=True)
class FusionMatch:
    """A site's match: the pair, the IBN block around it (None for a bare pair), and how numpy follows the
    block's activation and SE gate for refine (None when refine is off or the pair is bare, a reason in
    words when they cannot be followed)."""

    pair: ExpandDepthwisePair
    block: IBNBlock | None
    followed: tuple[Elementwise, SqueezeExcitation | None] | str | None


class FuseIbnExpansion(Pass):
    name = "fuse_ibn_expansion"
    exactness = Exactness.LOSSY
    summary = "fuse a 1x1 expand conv and the KxK depthwise conv it feeds (in an IBN block or not) into one KxK conv"
    params = (Param("init", str, "lsq", "how the fused weights are made: lsq (least squares on calibration "
                                        "data) or compose (product of the kernels)",
                    choices=("lsq", "compose")),
              Param("refine", int, DEFAULT_REFINE, "gradient steps that refine the fitted fused conv and "
                    "projection through the activation (0: least squares alone; lsq in an IBN block only)",
                    at_least=0))

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        blocks = {block.expand: block for block in find_ibn_blocks(model)}
        for node in model.nodes:
            pair = pair_ending_at(model, node)
            if pair is None:
                continue
            if isinstance(pair, UnpairedExpand):
                yield self.decline(pair.expand, pair.reason)
                continue
            expand, depthwise = model.node(pair.expand), node
            if any(d != 1 for d in ConvGeometry.of(model, depthwise).dilations):
                yield self.decline(pair.expand, f"{pair.depthwise} is dilated")
                continue
            if not ConvGeometry.of(model, expand).is_identity_window:
                # The fused conv reads the expand conv's input where the depthwise conv reads the expansion.
                yield self.decline(pair.expand, "the expand conv is strided or padded")
                continue
            if not (model.is_constant(expand.input[1]) and model.is_constant(depthwise.input[1])):
                yield self.decline(pair.expand, "the conv weights are not constant")
                continue
            block = blocks.get(pair.expand)
            refined = params["refine"] and params["init"] == "lsq"
            followed = _followed(model, block) if refined and block is not None else None
            if block is None:
                fit = "; no projection: fitted to the depthwise output, not refined" if params["init"] == "lsq" else ""
            else:
                fit = f"; not refined: {followed}" if isinstance(followed, str) else ""
            yield self.site(pair.expand, pair.nodes, {"init": params["init"], "refine": params["refine"]},
                            match=FusionMatch(pair, block, followed),
                            summary=f"{pair.in_channels}->{pair.expanded_channels} 1x1 + {pair.kernel[0]}x"
                                    f"{pair.kernel[1]} depthwise -> one {pair.kernel[0]}x{pair.kernel[1]} conv "
                                    f"({pair.activation} dropped{fit})")

    def preview(self, model: Model, site: Site) -> Model:
        return _compose(model, site.match.pair)[0]  # same graph as lsq, without the fitting

    def output_tensor(self, model: Model, site: Site) -> str:
        """The tensor whose change is the site's local error: the block's projection output, or for a bare
        pair the depthwise conv's output (which the fused conv now writes)."""
        block = site.match.block
        return model.node(block.project).output[0] if block is not None else site.match.pair.output

    def rewrite(self, model: Model, site: Site, calib=None, reference: Model | None = None) -> Model:
        pair, block, followed = site.match.pair, site.match.block, site.match.followed
        composed, fused = _compose(model, pair)
        if site.param_dict["init"] == "compose":
            return composed
        depthwise = model.node(pair.depthwise)
        project = model.node(block.project) if block is not None else None
        memo = active_memo() if project is not None and calib is not None else None
        key = None if memo is None else fit_key(model, [project.output[0]], reference,
                                                [pair.output, project.output[0]], calib, str(site.step))
        known = None if memo is None else memo.get(key)
        if known is not None:  # the same block, fed and aimed at the same tensors, fitted before
            return _fitted_block(composed, fused, block, known)
        # Stage 1: the fused conv reproduces the depthwise output from the expand conv's input. Every
        # stage aims at the reference's tensors, so it also makes up for what earlier steps changed upstream.
        seen, aimed = capture_fit(model, [pair.input], [pair.output, *([project.output[0]] if project else [])],
                                  calib, reference)
        fused_weight, fused_bias = fit_conv(seen[pair.input], aimed[pair.output], ConvGeometry.of(model, depthwise))
        fitted = _replace_weights(composed, fused, fused_weight, fused_bias)
        if project is None:  # a bare pair: stage 1 is its whole fit
            return fitted
        # Stage 2: the projection reproduces the original block output from its new input.
        new_input = capture(fitted, [project.input[0]], calib)[project.input[0]]
        weight, bias = fit_conv(new_input, aimed[project.output[0]], ConvGeometry.of(model, project))
        fitted = _replace_weights(fitted, block.project, weight, bias)
        weights = {"w1": fused_weight, "b1": fused_bias, "w2": weight, "b2": bias}
        if followed is not None and not isinstance(followed, str):
            # Stage 3: both convs refined together through the activation and the SE gate.
            convs = ConvPair.of(ConvGeometry.of(model, depthwise), *followed, _weights(fitted, fused),
                                _weights(fitted, block.project))
            _check(convs, fitted, block, calib)
            refined = convs.refine(seen[pair.input], aimed[project.output[0]], site.param_dict["refine"])
            if refined is not convs:  # else the steps did not lower the error: stage 2's weights stand
                weights = dict(zip(("w1", "b1", "w2", "b2"), refined.onnx_weights()))
        if memo is not None:
            memo.put(key, weights)  # type: ignore[arg-type]
        return _fitted_block(composed, fused, block, weights)


def _fitted_block(composed: Model, fused: str, block: IBNBlock, weights: dict[str, np.ndarray]) -> Model:
    """The composed graph with the fitted weights of the fused conv and the projection: each conv's weights
    replaced once, whichever stage made them, so that a memo's hit writes the bytes its fit would."""
    return _replace_weights(_replace_weights(composed, fused, weights["w1"], weights["b1"]), block.project,
                            weights["w2"], weights["b2"])


def _followed(model: Model, block: IBNBlock) -> tuple[Elementwise, SqueezeExcitation | None] | str:
    """The activation the fused conv keeps and the block's SE branch as numpy follows them, or why it cannot."""
    output = model.node(block.depthwise).output[0]
    found = match_activation_chain(model, output)
    activation = Elementwise.of(model, output, *((found.nodes, found.output) if found else ()))
    gate = SqueezeExcitation.of(model, block.squeeze_excitation) if block.squeeze_excitation else None
    unfollowed = next((x for x in (activation, gate) if isinstance(x, str)), None)
    return unfollowed or (activation, gate)


def _check(pair: ConvPair, model: Model, block: IBNBlock, calib) -> None:
    """The numpy block must compute what onnxruntime computes, or the refinement fits something else."""
    few = {k: v[:CHECKED_SAMPLES] for k, v in calib.items()} if calib is not None else None
    project = model.node(block.project).output[0]
    seen = capture(model, [block.input, project], few)
    error = relative_error(seen[project], pair(seen[block.input]))
    if error > 1e-3:
        raise VerificationError(f"fuse_ibn_expansion at {block.expand}: the numpy block that refine fits differs "
                                f"from onnxruntime's by {error:.2g} (relative); this is a bug in onnx-tailor")


def _weights(model: Model, conv_name: str) -> tuple[np.ndarray, np.ndarray]:
    conv = model.node(conv_name)
    weight = model.constant(conv.input[1])
    bias = model.constant(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    return weight, np.zeros(weight.shape[0], weight.dtype) if bias is None else bias


def _compose(model: Model, pair: ExpandDepthwisePair) -> tuple[Model, str]:
    """The fused graph with the product of the kernels as weights, and the fused conv's name."""
    expand, depthwise = model.node(pair.expand), model.node(pair.depthwise)
    w_e, w_d = constant_value(model, expand, 1), constant_value(model, depthwise, 1)
    b_e = constant_value(model, expand, 2)
    b_d = constant_value(model, depthwise, 2)
    ce = w_e.shape[0]
    b_e = np.zeros(ce, w_e.dtype) if b_e is None else b_e
    b_d = np.zeros(ce, w_e.dtype) if b_d is None else b_d
    fused_w = (w_d[:, 0][:, None] * w_e[:, :, 0, 0][:, :, None, None]).astype(w_e.dtype)  # [Ce, Ci, K, K]
    fused_b = (b_d + b_e * w_d.reshape(ce, -1).sum(axis=1)).astype(w_e.dtype)
    attrs = plain_attributes(depthwise)
    if attrs is None:
        raise PassError(f"fuse_ibn_expansion at {pair.expand}: the depthwise conv has an attribute that is not a "
                        "plain value")
    # A new node and what it leaves unread dropped: a sketch's preview edits its proto directly (`node_edits`).
    fused = AddNode("Conv", f"{expand.name}_fused", {k: v for k, v in attrs.items() if k != "group"} | {"group": 1},
                    (expand.input[0], NewTensor(f"{expand.name}.weight_fused", fused_w),
                     NewTensor(f"{expand.name}.bias_fused", fused_b)), tuple(depthwise.output))
    composed = apply_edits(model, [fused])
    return composed, composed.producer(pair.output).name


def _replace_weights(model: Model, conv_name: str, weight: np.ndarray, bias: np.ndarray) -> Model:
    graph = model.to_graphsurgeon()
    conv = nodes_by_name(graph)[conv_name]
    set_constant_input(graph, conv, 1, weight, "weight_fit")
    set_constant_input(graph, conv, 2, bias, "bias_fit")
    return model.from_graphsurgeon(graph)
