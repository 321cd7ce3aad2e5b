"""simplify: the clean-ups an exported model needs before it can be analysed.

Before:  Identity/Dropout nodes, nodes whose inputs are all constants (e.g.
         Reshape(bias, [1, C, 1, 1])), a Conv followed by an Add/Mul by a
         per-channel constant.
After:   the same network with all of those folded away.

This is onnxruntime's basic-level offline optimization (constant folding,
redundant-node elimination, Conv+Add/Mul folding) rather than our own
rewrite of it; see `ir.cleanup.ort_basic_cleanup` for what is switched off
and why. It runs on the whole model at once, so its one site is anchored at
the first node it would remove. Canonicalization runs it on every model we
load, so it finds sites only in a model loaded with `canonical=False`.
"""

from __future__ import annotations

from typing import Any, Iterable

from ..ir import Model
from ..ir.cleanup import computes_in_reduced_float, is_quantized, lift_constants, name_nodes, ort_basic_cleanup
from ..ir.shapes import infer_shapes
from .base import Declined, Exactness, Pass, Site

_REDUNDANT = {"Identity", "Dropout"}


class Simplify(Pass):
    name = "simplify"
    exactness = Exactness.EXACT
    summary = "fold constant sub-graphs, drop Identity/Dropout, fold Conv+Add/Mul (onnxruntime basic level)"

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        if computes_in_reduced_float(model.proto):  # ort_basic_cleanup leaves such a model as it is
            yield self.decline(model.nodes[0].name, "the model computes in float16/bfloat16, which onnxruntime's "
                                                    "clean-up would turn into float32")
            return
        removable = [n.name for n in model.nodes if n.op_type in _REDUNDANT or self._all_constant(model, n)]
        if removable:
            yield self.site(removable[0], removable,
                            summary=f"whole model: {len(removable)} constant or redundant nodes")

    @staticmethod
    def _all_constant(model: Model, node) -> bool:
        inputs = [i for i in node.input if i]
        if not inputs or not all(model.is_constant(i) for i in inputs):
            return False
        return not any(is_quantized(model.initializer(i)) for i in inputs)  # quantized weights are not folded

    def rewrite(self, model: Model, site: Site, calib=None, reference: Model | None = None) -> Model:
        cleaned = name_nodes(ort_basic_cleanup(lift_constants(model.proto)))
        return model.with_proto(infer_shapes(cleaned))
