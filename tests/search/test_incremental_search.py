"""The search's previews, carried over between steps, equal the preview scored whole.

A candidate whose footprint the last step left alone keeps the predicted change
it had on the parent model; every candidate of every model along a search path
must still predict what scoring its preview whole predicts.
"""

from __future__ import annotations

import pytest

from onnx_tailor import accuracy
from onnx_tailor.costmodel import load_target
from onnx_tailor.passes import get_pass
from onnx_tailor.passes.canonicalize import load
from onnx_tailor.search import preview as previewing
from onnx_tailor.search.constraints import Constraints, parse_max_drop
from onnx_tailor.search.context import SearchContext
from onnx_tailor.search.optimize import _load_split, _search_data
from tests.conftest import DIGITS

EXACT = ["pad_channels", "densify_depthwise"]


@pytest.mark.parametrize("target", ["npu-p32", "npu-p64"])
def test_carried_over_previews_equal_whole_scores_along_a_search_path(target):
    model = load(DIGITS.path)
    ctx = SearchContext(model, load_target(target), EXACT, Constraints(), None)
    node, checked = ctx.root, 0
    for _ in range(4):
        for candidate in ctx.candidates(node):
            preview = get_pass(candidate.step.pass_name).preview(node.model, candidate.site)
            whole = ctx.cost_model.predict(preview).latency_s
            assert candidate.predicted_s == pytest.approx(whole, rel=1e-9), str(candidate.step)
            checked += 1
        node = next((child for child in ctx.children(node, 4) if child.feasible), None)
        if node is None:
            break
        assert node.latency_s == pytest.approx(ctx.cost_model.predict(node.model).latency_s, rel=1e-12)
    assert checked > 4
    assert ctx.stats.reused > 0, "no preview was carried over: the cache went untested"
    assert ctx.stats.whole < ctx.stats.previewed / 2, "few previews were scored on a region: regions went untested"


def test_carried_over_previews_equal_whole_scores_along_the_ceiling_walk_with_lossy_passes():
    """The ceiling walk applies previews of every pass, lossy ones too, so many sites carry over; on digits,
    from the seventh step on, some of them would predict wrongly if a step's changed region were ignored."""
    model = load(DIGITS.path)
    split = _load_split(model, DIGITS.path.parent / "digits_eval.npz", 0, accuracy.DEFAULT_SPLIT)
    data, _, _ = _search_data(model, split, None, "1.0", parse_max_drop("1.0"), ("fp32", "point"), True, [])
    passes = ["fuse_ibn_expansion", "align_channels", "pad_channels", "scale_depth", "densify_depthwise"]
    ctx = SearchContext(model, load_target("npu-p32"), passes, Constraints(), data)
    node, checked = ctx.root, 0
    for _ in range(10):
        for candidate in ctx.candidates(node):
            preview = get_pass(candidate.step.pass_name).preview(node.model, candidate.site)
            assert candidate.predicted_s == pytest.approx(ctx.cost_model.predict(preview).latency_s, rel=1e-9), \
                str(candidate.step)
            checked += 1
        node, _ = ctx.ceiling(node, max_steps=1)
    assert len(node.steps) == 10 and checked > 20
    assert ctx.stats.reused > checked / 4, "few previews were carried over: the cache went untested"


def test_a_region_that_cannot_tell_falls_back_to_the_whole_model_and_is_counted(monkeypatch):
    """Regions cut at the site's own nodes cannot see the readers a rewrite reshapes: every preview is then
    scored whole, counted as such, and still predicts what the whole preview does."""
    monkeypatch.setattr(previewing, "region_around", lambda model, costs, names, hops: set(names))
    model = load(DIGITS.path)
    ctx = SearchContext(model, load_target("npu-p32"), EXACT, Constraints(), None)
    candidates = ctx.candidates(ctx.root)
    for candidate in candidates:
        preview = get_pass(candidate.step.pass_name).preview(ctx.root.model, candidate.site)
        assert candidate.predicted_s == pytest.approx(ctx.cost_model.predict(preview).latency_s, rel=1e-9)
    assert ctx.stats.previewed == len(candidates) > 4
    assert ctx.stats.whole == ctx.stats.previewed
    assert ctx.stats.to_dict()["candidates_scored_whole"] == ctx.stats.whole
