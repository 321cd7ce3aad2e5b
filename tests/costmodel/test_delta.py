"""Scoring a rewrite by its change equals scoring the rewritten model whole.

For every pass and every site it finds on the test models, the preview's
latency predicted from the parent's kernels (minus the removed, plus the
added) must equal the learned cost model's prediction of the whole preview;
so must the prediction from the rewrite of a region cut out around the site,
whenever the region claims it can tell (and it must, on most sites), and so
must every site's preview when all are previewed together, sharing regions.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from onnx_tailor.costmodel import cost_model_for, load_target
from onnx_tailor.costmodel.delta import kernel_costs, predict_change, predict_region_change, score
from onnx_tailor.ir import Model
from onnx_tailor.ir.model import SKETCHED_FROM
from onnx_tailor.ir.regions import extract
from onnx_tailor.passes import all_passes, get_pass
from onnx_tailor.passes.canonicalize import canonicalize, load
from onnx_tailor.search.preview import previews, region_change
from tests.graphs import tiny_mobilenet

PARAMS = {"align_channels": {"multiple": 16}, "pad_channels": {"multiple": 16}, "factor_low_rank": {"energy": 0.8}}


def _check_every_site(model: Model, target: str) -> int:
    cost_model = cost_model_for(load_target(target))
    costs = kernel_costs(cost_model, model)
    assert costs.latency_s == pytest.approx(cost_model.predict(model).latency_s, rel=1e-12)
    checked, by_region, sites, wholes = 0, 0, [], []
    for pass_name in all_passes():
        rewrite = get_pass(pass_name)
        params = PARAMS.get(pass_name, {})
        for site in rewrite.find(model, **params):
            preview = rewrite.preview(model, site)
            change = predict_change(cost_model, costs, preview)
            whole = cost_model.predict(preview).latency_s
            assert change.latency_s == pytest.approx(whole, rel=1e-9, abs=1e-15), f"{pass_name}@{site.anchor}"
            if preview.content_hash != model.content_hash:
                assert change.removed or change.added, f"{pass_name}@{site.anchor} changed the model but no kernel"
            unscored = region_change(cost_model, costs, model, rewrite, site, params)
            if unscored is not None:
                region = score(cost_model, [unscored])[0]
                assert region.latency_s == pytest.approx(whole, rel=1e-9, abs=1e-15), f"{pass_name}@{site.anchor}"
                assert (region.removed, region.added) == (change.removed, change.added), f"{pass_name}@{site.anchor}"
                by_region += 1
            checked += 1
            sites.append(site)
            wholes.append(whole)
    assert by_region >= 0.9 * checked, f"only {by_region} of {checked} sites previewed on a region"
    # All together, as the search previews them: sites of several passes share a region and its sites.
    found, whole_answers = previews(cost_model, model, costs, sites, PARAMS)
    for site, preview, whole in zip(sites, found, wholes):
        assert costs.latency_s + preview.delta_s == pytest.approx(whole, rel=1e-9, abs=1e-15), site.step
    assert whole_answers <= checked - by_region
    return checked


@pytest.mark.parametrize("target", ["npu-p32", "cpu-ort"])
def test_incremental_score_equals_whole_on_every_site_of_a_small_model(target):
    model = Model(canonicalize(tiny_mobilenet()))
    assert _check_every_site(model, target) > 3


def test_incremental_score_equals_whole_on_every_site_of_every_test_model(model_case):
    model = load(model_case.path, model_case.input_shapes or None)
    assert _check_every_site(model, "npu-p32") > 10


def test_a_changed_kernel_is_not_taken_for_the_old_one():
    """Padding a conv's output channels keeps every node's definition: only shapes tell the kernels apart."""
    model = Model(canonicalize(tiny_mobilenet()))
    cost_model = cost_model_for(load_target("npu-p32"))
    rewrite = get_pass("pad_channels")
    site = rewrite.find(model, multiple=16)[0]
    preview = rewrite.preview(model, site)
    change = predict_change(cost_model, kernel_costs(cost_model, model), preview)
    assert site.anchor in change.removed and site.anchor in change.added
    assert change.latency_s != pytest.approx(kernel_costs(cost_model, model).latency_s, rel=1e-12)


def test_a_region_cut_too_close_to_the_rewrite_declines_instead_of_guessing():
    """Padding a conv changes the shape of what its readers read: a region of the site and the conv's kernel has the
    changed tensor on its border, so it cannot tell (and a region one kernel wider can)."""
    model = Model(canonicalize(tiny_mobilenet()))
    cost_model = cost_model_for(load_target("npu-p32"))
    costs = kernel_costs(cost_model, model)
    rewrite = get_pass("pad_channels")
    site = rewrite.find(model, multiple=16)[0]
    tight = extract(model, set(costs.nodes({costs.owners[site.anchor]})) | site.nodes)
    assert tight is not None
    local = next(s for s in rewrite.find(tight, multiple=16) if s.step == site.step)
    assert predict_region_change(cost_model, costs, model, tight, rewrite.preview(tight, local)) is None
    wide = score(cost_model, [region_change(cost_model, costs, model, rewrite, site, {"multiple": 16})])[0]
    assert wide.latency_s == pytest.approx(cost_model.predict(rewrite.preview(model, site)).latency_s, rel=1e-9)


def test_a_sketched_rewrite_prices_as_the_real_one_and_holds_no_large_weight_values():
    """Region previews rewrite a sketch (`Model(sketch=True)`): the rewrite's large float weights keep only their
    type and dims. On every pass and site, the sketch's rewrite must score as the real rewrite does, kernel by
    kernel, and its large weights must really be gone (reading one fails instead of reading zeros)."""
    model = Model(canonicalize(tiny_mobilenet()))
    sketch = Model(model.proto, sketch=True)
    cost_model = cost_model_for(load_target("npu-p32"))
    checked, emptied = 0, 0
    for pass_name in all_passes():
        rewrite = get_pass(pass_name)
        for site in rewrite.find(model, **PARAMS.get(pass_name, {})):
            real, sketched = rewrite.preview(model, site), rewrite.preview(sketch, site)
            assert sketched.sketch and not real.sketch
            assert kernel_costs(cost_model, sketched).kernels.keys() == kernel_costs(cost_model, real).kernels.keys()
            assert cost_model.predict(sketched).latency_s == cost_model.predict(real).latency_s, pass_name
            large = [t for t in sketched.graph.initializer
                     if t.data_type == onnx.TensorProto.FLOAT and math.prod(t.dims) >= SKETCHED_FROM]
            assert large and all(not t.raw_data and not t.float_data for t in large), pass_name
            with pytest.raises(ValueError):
                sketched.constant(large[0].name)
            small = [t.name for t in sketched.graph.initializer if math.prod(t.dims) < SKETCHED_FROM]
            assert all(np.array_equal(sketched.constant(n), real.constant(n)) for n in small if real.is_constant(n))
            checked += 1
            emptied += len(large)
    assert checked > 3 and emptied > checked
