"""fold_batchnorm: fold an inference-mode BatchNormalization into the Conv before it.

Before:  x -> Conv(W, b) -> BatchNormalization(gamma, beta, mean, var, eps) -> y
After:   x -> Conv(W', b') -> y

    s  = gamma / sqrt(var + eps)          (per output channel)
    W' = W * s[:, None, None, None]
    b' = (b - mean) * s + beta            (b = 0 when the Conv has no bias)

Conditions: the Conv's output feeds only the BatchNormalization (and is not a
graph output), and the Conv weights, bias and every BatchNormalization
parameter are constants. Exact up to float rounding. Canonicalization runs
this pass over the whole model (`fold_all_batchnorms`).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..ir import Model
from .base import Declined, Exactness, Pass, Site
from .graph_edit import constant_input, nodes_by_name, set_constant_input


class FoldBatchnorm(Pass):
    name = "fold_batchnorm"
    exactness = Exactness.EXACT
    summary = "fold an inference BatchNormalization into the Conv that feeds it"

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        for bn in model.nodes:
            if bn.op_type != "BatchNormalization":
                continue
            reason = self._why_not(model, bn)
            if reason:
                yield self.decline(bn.name, reason)
            else:
                conv = model.producer(bn.input[0])
                yield self.site(bn.name, {conv.name, bn.name}, summary=f"fold into {conv.name}")

    @staticmethod
    def _why_not(model: Model, bn: onnx.NodeProto) -> str | None:
        conv = model.producer(bn.input[0])
        if conv is None or conv.op_type != "Conv":
            return f"its input comes from {conv.op_type if conv else 'a graph input'}, not a Conv"
        if model.sole_consumer(conv.output[0]) is None:
            return f"the output of {conv.name} has other consumers besides the BatchNormalization"
        if len([o for o in bn.output if o]) > 1:
            return "it is in training mode (running statistics are outputs)"
        weights = [conv.input[1]] + list(conv.input[2:3]) + list(bn.input[1:5])
        missing = [w for w in weights if w and not model.is_constant(w)]
        if missing:
            return f"'{missing[0]}' is computed at run time, not a constant"
        return None

    def rewrite(self, model: Model, site: Site, calib=None, reference: Model | None = None) -> Model:
        graph = model.to_graphsurgeon()
        bn = nodes_by_name(graph)[site.anchor]
        _fold(graph, bn.inputs[0].inputs[0], bn)
        return model.from_graphsurgeon(graph)


def _fold(graph: gs.Graph, conv: gs.Node, bn: gs.Node) -> None:
    gamma, beta, mean, var = (constant_input(bn, i).astype(np.float64) for i in range(1, 5))
    eps = float(bn.attrs.get("epsilon", 1e-5))
    weight = constant_input(conv, 1)
    bias = constant_input(conv, 2)
    scale = gamma / np.sqrt(var + eps)
    new_weight = weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    new_bias = ((bias.astype(np.float64) if bias is not None else 0.0) - mean) * scale + beta
    set_constant_input(graph, conv, 1, new_weight.astype(weight.dtype), "weight_bn")
    set_constant_input(graph, conv, 2, new_bias.astype(weight.dtype), "bias_bn")
    conv.outputs = list(bn.outputs)
    bn.outputs.clear()


def fold_all_batchnorms(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every foldable BatchNormalization in one graph edit (used by canonicalize)."""
    model = Model(proto)
    sites = FoldBatchnorm().find(model)
    if not sites:
        return proto
    graph = model.to_graphsurgeon()
    by_name = nodes_by_name(graph)
    for site in sites:
        bn = by_name[site.anchor]
        _fold(graph, bn.inputs[0].inputs[0], bn)
    return model.from_graphsurgeon(graph).proto
