"""Why the search stopped, the ceiling it stopped under, and the time budget kept as a promise.

On the tiny synthetic MobileNet with random data and cosine, as in test_optimize.py.
"""

from __future__ import annotations

import pytest

from onnx_tailor.search.context import SearchContext
from onnx_tailor.search.report import format_report
from tests.search.tiny_search import run


def test_a_converged_search_says_so_and_gives_the_ceiling_above_what_it_took(tiny):
    report = run(tiny).report
    stopped, optimized = report["stopped"], report["optimized"]["predicted_latency_ms"]
    assert stopped["why"] == "converged"
    ceiling = stopped["ceiling"]
    assert ceiling["complete"] and ceiling["predicted_ms"] <= optimized + 1e-12
    assert 0 <= ceiling["share_taken"] <= 1 and ceiling["simulated_ms"] > 0
    for fates in stopped["remaining"].values():
        assert all(count > 0 for count in fates.values())


def test_a_tiny_budget_stops_on_accuracy_under_a_ceiling_the_lossy_passes_would_reach(tiny):
    # 1e-9, not 0: a zero budget does not even try lossy passes (only exact rewrites qualify)
    report = run(tiny, max_drop="1e-9", passes=["fuse_ibn_expansion", "pad_channels"]).report
    stopped = report["stopped"]
    lossy = stopped["remaining"]["fuse_ibn_expansion"]
    assert set(lossy) <= {"over the accuracy budget", "local error over the cap of 0.5",
                          "never tried: not among the most promising the search evaluates from this model"}
    assert lossy.get("over the accuracy budget", 0) + lossy.get("local error over the cap of 0.5", 0) > 0
    assert stopped["ceiling"]["predicted_ms"] < report["optimized"]["predicted_latency_ms"]
    assert stopped["ceiling"]["share_taken"] < 1
    assert "search stopped: converged" in format_report(report)


def test_the_search_leaves_the_reserve_for_the_work_after_it(tiny, monkeypatch):
    """A budget far longer than the run, but a reserve for replaying and judging that fills it: the
    search must not start an expansion, and says that the budget ran out."""
    monkeypatch.setattr(SearchContext, "reserve_s", lambda self: 1e6)
    result = run(tiny, time_budget=1e5)
    assert not result.recipe.steps and result.context.stats.applied == 0
    assert result.report["stopped"]["why"] == "time budget"
    assert any("time budget" in n for n in result.notes)
    fates = {fate for per_pass in result.report["stopped"]["remaining"].values() for fate in per_pass}
    assert "never previewed: the time budget ran out" in fates  # greedy checks the clock before previewing
    assert result.report["stopped"]["ceiling"] is None  # no time to walk to it, and no made-up figure
    assert "no time was left to walk to the ceiling" in format_report(result.report)


def test_the_reserve_covers_judging_the_best_and_replaying_its_path_only_when_not_at_hand(tiny, monkeypatch):
    ctx = run(tiny).context
    path, node = [], ctx.best
    while node.steps:
        path.append(node)
        node = ctx._parents[node.key]
    assert path, "the search took no step: nothing to replay"
    replay = sum(ctx._apply_s[n.key] for n in path)
    judge = sum(ctx._judge_s) / len(ctx._judge_s)
    assert ctx.path(ctx.best) == [n.model for n in [node, *reversed(path)]]  # the written model's path, as built
    assert ctx.reserve_s() == pytest.approx(3 * judge + 2 * ctx._score_s)
    monkeypatch.setattr(SearchContext, "path", lambda self, node: None)  # then optimize replays the recipe
    assert ctx.reserve_s() == pytest.approx(replay + 3 * judge + 2 * ctx._score_s)
    assert ctx.reserve_s() > replay > 0


def test_a_step_over_the_accuracy_budget_is_not_tried_again_where_nothing_around_it_changed(tiny, monkeypatch):
    """Under a budget only exact steps fit, the fusions fail from the original; after each exact step that
    leaves a fusion's site alone, trying it again would fail the same way: the search skips it, reaches the
    same model with fewer evaluations, and still reports it as over the accuracy budget."""
    skipping = run(tiny, max_drop="1e-9")
    skipped = [e for e in skipping.context.log if e["outcome"].startswith("over the accuracy budget from an earlier")]
    assert skipped and all(e["after_steps"] > 0 for e in skipped)
    assert {e["fate"] for e in skipped} == {"over_accuracy_budget"}  # the code the report's blocks give, not 'other'
    assert not any("other" in block["reasons"] for block in skipping.report["blocks"])
    for entry in skipped:  # each was evaluated, and failed on accuracy, from an earlier model
        assert any(e["step"] == entry["step"] and e["after_steps"] < entry["after_steps"]
                   and e["outcome"].startswith("cosine drops") for e in skipping.context.log)
    ctx, node = skipping.context, skipping.context.best  # the report's fates, asked of the model it skipped on
    while len(node.steps) > skipped[0]["after_steps"]:
        node = ctx._parents[node.key]
    assert ctx.fates(node, timed_out=False)["fuse_ibn_expansion"].get("over the accuracy budget", 0) > 0

    monkeypatch.setattr(SearchContext, "failed_before", lambda self, node, candidate: False)
    retrying = run(tiny, max_drop="1e-9")
    assert skipping.model.content_hash == retrying.model.content_hash
    assert skipping.context.stats.applied < retrying.context.stats.applied
