"""An exact pass that breaks a model must be caught, and must name itself and the site."""

import numpy as np
import pytest

from onnx_tailor.errors import VerificationError
from onnx_tailor.ir import Model
from onnx_tailor.passes import apply_step, registry
from onnx_tailor.passes.densify_depthwise import DensifyDepthwise
from onnx_tailor.passes.graph_edit import constant_input, nodes_by_name, set_constant_input
from tests.graphs import GraphBuilder


class _OffByOne(DensifyDepthwise):
    """Densifies, then nudges one weight: exactly the kind of bug verification exists for."""

    def rewrite(self, model, site, calib=None, reference=None):
        rewritten = super().rewrite(model, site)
        graph = rewritten.to_graphsurgeon()
        conv = nodes_by_name(graph)[site.anchor]
        weight = constant_input(conv, 1).copy()
        weight[0, 0, 0, 0] += 0.5
        set_constant_input(graph, conv, 1, weight, "broken")
        return rewritten.from_graphsurgeon(graph)


def test_a_wrong_exact_rewrite_is_refused_with_pass_and_site(monkeypatch):
    b = GraphBuilder(seed=8)
    model = Model(b.build({"x": (1, 4, 6, 6)}, [b.conv("x", 4, 4, 3, group=4, name="dw")]))
    broken = _OffByOne()
    monkeypatch.setitem(registry._PASSES, broken.name, broken)  # apply_step finds passes by name
    [site] = broken.find(model)
    with pytest.raises(VerificationError, match=r"densify_depthwise at site dw changed the model's outputs"):
        apply_step(model, site)
    assert np.isfinite(model.constant(model.node("dw").input[1])).all()  # input untouched
