"""A sketch edited on its proto (`passes.node_edits.on_sketch`) is what graphsurgeon's round trip makes of it.

Rewrites that keep the graph's wiring (the channel edits of pad_channels,
align_channels and scale_depth; densify_depthwise) edit a sketch's proto
directly instead of going through graphsurgeon. For every pass and
every site on the test models, on the region the search previews it on and
on a sketch of the whole model, the preview must be the same proto, byte for
byte, with the direct path on and off; and the direct path must really be
taken for those (else this test would compare graphsurgeon with
itself).
"""

from __future__ import annotations

import numpy as np
import pytest

from onnx_tailor.costmodel import cost_model_for, load_target
from onnx_tailor.costmodel.delta import kernel_costs, region_around
from onnx_tailor.ir import Model
from onnx_tailor.ir.regions import extract
from onnx_tailor.passes import all_passes, get_pass, node_edits
from onnx_tailor.passes.canonicalize import canonicalize, load
from onnx_tailor.passes.channel_edit import Keep, Pad, edit_plan
from onnx_tailor.search.preview import REGION_HOPS
from tests.graphs import tiny_mobilenet

PARAMS = {"align_channels": {"multiple": 16}, "pad_channels": {"multiple": 16}, "scale_depth": {"multiple": 16},
          "factor_low_rank": {"energy": 0.8}}
DIRECT = {"pad_channels", "align_channels", "scale_depth", "densify_depthwise", "fuse_ibn_expansion"}


def _previews(monkeypatch, rewrite, subject: Model, site, native: bool) -> tuple[Model, int]:
    """`rewrite`'s preview of `site` on `subject`, and how many times it went directly to the proto."""
    calls = []
    real = node_edits.on_sketch

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(node_edits, "NATIVE", native)
    monkeypatch.setattr(node_edits, "on_sketch", counted)
    return rewrite.preview(subject, site), len(calls)


def _check_every_site(monkeypatch, model: Model) -> tuple[int, int]:
    cost_model = cost_model_for(load_target("npu-p32"))
    costs = kernel_costs(cost_model, model)
    whole = Model(model.proto, sketch=True)
    checked = direct = 0
    for pass_name in all_passes():
        rewrite = get_pass(pass_name)
        params = PARAMS.get(pass_name, {})
        for site in rewrite.find(model, **params):
            region = extract(model, region_around(model, costs, site.nodes, REGION_HOPS), sketch=True)
            for subject in (whole, region):
                if subject is None:
                    continue
                local = next((s for s in rewrite.find(subject, **params) if s.step == site.step), None)
                if local is None:
                    continue
                native, calls = _previews(monkeypatch, rewrite, subject, local, True)
                graphsurgeon, none = _previews(monkeypatch, rewrite, subject, local, False)
                assert none == 0
                assert native.proto.SerializeToString() == graphsurgeon.proto.SerializeToString(), \
                    f"{pass_name}@{site.anchor}"
                assert native.sketch and native.shapes_inferred
                if pass_name in DIRECT:
                    assert calls == 1, f"{pass_name}@{site.anchor} did not edit the sketch directly"
                checked, direct = checked + 1, direct + calls
    return checked, direct


def test_a_sketch_edited_directly_is_graphsurgeons_on_every_site_of_a_small_model(monkeypatch):
    checked, direct = _check_every_site(monkeypatch, Model(canonicalize(tiny_mobilenet())))
    assert checked > 6 and direct > 3


def test_a_sketch_edited_directly_is_graphsurgeons_on_every_site_of_every_test_model(monkeypatch, model_case):
    checked, direct = _check_every_site(monkeypatch, load(model_case.path, model_case.input_shapes or None))
    assert checked > 10 and direct > 5


def test_a_real_model_is_always_edited_by_graphsurgeon(monkeypatch):
    """Only a sketch, which is scored and never run, takes the direct path: a real model keeps every weight."""
    model = Model(canonicalize(tiny_mobilenet()))
    rewrite = get_pass("pad_channels")
    site = rewrite.find(model, multiple=16)[0]
    padded, calls = _previews(monkeypatch, rewrite, model, site, True)
    assert calls == 0 and not padded.sketch
    widened = padded.constant(padded.node(site.anchor).input[1])
    channels = model.constant(model.node(site.anchor).input[1]).shape[0]
    assert widened.shape[0] % 16 == 0 and np.all(widened[channels:] == 0)


def test_large_new_weights_of_a_direct_edit_keep_only_their_dims(monkeypatch):
    model = Model(canonicalize(tiny_mobilenet()))
    rewrite = get_pass("pad_channels")
    site = max(rewrite.find(model, multiple=16), key=lambda s: len(s.match.sources))
    padded, calls = _previews(monkeypatch, rewrite, Model(model.proto, sketch=True), site, True)
    assert calls == 1
    new = [t for t in padded.graph.initializer if t.name.endswith("weight_padded")]
    large = [t for t in new if np.prod(t.dims) >= node_edits.SKETCHED_FROM]
    assert large and all(not t.raw_data and not t.float_data for t in large)
    with pytest.raises(ValueError):
        padded.constant(large[0].name)


@pytest.mark.parametrize("edit", [Pad(5), Keep(np.array([0, 2, 3]))])
def test_a_plan_names_each_input_it_replaces_once(edit):
    """The plan is applied in order and names new constants by node and suffix: one (node, input) is set once."""
    model = Model(canonicalize(tiny_mobilenet()))
    site = get_pass("pad_channels").find(model, multiple=16)[0]
    plan = edit_plan(model, site.match, edit)
    targets = [(e.node, e.index) for e in plan if isinstance(e, node_edits.SetConstant)]
    assert targets and len(targets) == len(set(targets))
    assert all(e.value.dtype == model.constant(model.node(e.node).input[e.index]).dtype
               for e in plan if isinstance(e, node_edits.SetConstant) and e.index < len(model.node(e.node).input)
               and model.is_constant(model.node(e.node).input[e.index]))


def test_a_name_an_edit_stopped_reading_is_free_again_as_in_graphsurgeon(monkeypatch):
    """New constants are named against the graph as edited so far: the third edit's `<node>.a` is free again
    once the second edit stopped reading the first one's, and is taken as graphsurgeon takes it."""
    model = Model(canonicalize(tiny_mobilenet()), sketch=True)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = np.zeros(model.declared_shape(conv.input[1]), np.float32)
    edits = [node_edits.SetConstant(conv.name, 1, weight, suffix) for suffix in ("a", "b", "a")]
    monkeypatch.setattr(node_edits, "NATIVE", True)
    native = node_edits.apply_edits(model, edits)
    monkeypatch.setattr(node_edits, "NATIVE", False)
    graphsurgeon = node_edits.apply_edits(model, edits)
    assert native.node(conv.name).input[1] == f"{conv.name}.a"
    assert native.proto.SerializeToString() == graphsurgeon.proto.SerializeToString()
