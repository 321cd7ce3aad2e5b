"""The search measures what it can: on a target measured here, a step is accepted only when measurably faster."""

from __future__ import annotations

import importlib

import pytest

from onnx_tailor.costmodel import load_target
from onnx_tailor.costmodel.sweep import SweepEntry
from onnx_tailor.search import format_report, optimize
from onnx_tailor.search.measured import Comparison, MeasuredSteps
from tests.search.tiny_search import PASSES
from tests.test_cli_report import check_report

CPU = load_target("cpu-ort")
optimize_module = importlib.import_module("onnx_tailor.search.optimize")  # the package's `optimize` is the function


@pytest.mark.parametrize("parent_ms, child_ms, faster, accepted", [
    (10.0, 9.5, 7, True),
    (10.0, 9.5, 5, True),  # 5 of 7 rounds is the 70% that a gain must hold in
    (10.0, 9.5, 4, False),  # a median gain that most rounds do not show is noise
    (10.0, 9.95, 7, False),  # under 1%: not measurably faster
    (10.0, 10.5, 0, False),
])
def test_a_step_is_accepted_when_measurably_faster(parent_ms, child_ms, faster, accepted):
    comparison = Comparison(parent_ms * 1e-3, child_ms * 1e-3, faster, 7)
    assert comparison.accepted is accepted
    assert comparison.to_dict()["speedup"] == pytest.approx(parent_ms / child_ms)


def test_a_measured_target_tries_every_candidate_predicted_faster():
    assert MeasuredSteps(CPU).min_gain(5e-3) == 0  # the measurement decides, not the cost model's noise margin
    assert MeasuredSteps(load_target("npu-p32")).min_gain(5e-3) == 5e-3


def test_side_by_side_timing_tells_a_much_faster_model_from_a_much_slower_one():
    big = SweepEntry.make("conv", ci=64, co=64, k=3, s=1, hw=56, act="none", ctx=0).model()
    small = SweepEntry.make("conv", ci=8, co=8, k=1, s=1, hw=56, act="none", ctx=0).model()
    measured = MeasuredSteps(CPU, rounds=3, runs=3)
    faster = measured.compare(big, small)  # about 300x fewer MACs: no machine noise hides that
    assert faster.accepted and faster.faster_rounds == 3 and faster.child_s < faster.parent_s
    slower = measured.compare(small, big)
    assert not slower.accepted and slower.faster_rounds == 0


def _fake_compare(accept):
    """`MeasuredSteps.compare` that says what `accept(parent, child)` says, with made-up medians."""
    def compare(self, parent, child):
        ok = accept(parent, child)
        return Comparison(1e-3, 0.9e-3 if ok else 1e-3, 7 if ok else 0, 7)
    return compare


def test_on_a_measured_target_every_accepted_step_was_measured_faster(tiny, monkeypatch):
    compared = []

    def accept(parent, child):
        compared.append((parent.content_hash, child.content_hash))
        return True
    monkeypatch.setattr(MeasuredSteps, "compare", _fake_compare(accept))
    result = optimize(tiny, CPU, passes=PASSES, data="random", metric="cosine", max_drop="0.05")
    steps = result.report["steps"]
    assert steps and all(s["accepted_on"] == "measurement" and s["measured"]["accepted"] for s in steps)
    assert len(compared) >= len(steps)
    measured = result.report["measured"]  # what the search already knows, without --measure timing anew
    assert measured["speedup"] == pytest.approx((1 / 0.9) ** len(steps))
    assert "the search" in measured["source"]
    assert check_report(result.report) == []  # measured steps are in the schema too
    text = format_report(result.report)
    assert "accepted on measurement" in text and f"{1 / 0.9:.3f}x" in text


def test_a_step_not_measurably_faster_is_not_accepted(tiny, monkeypatch):
    monkeypatch.setattr(MeasuredSteps, "compare", _fake_compare(lambda parent, child: False))
    result = optimize(tiny, CPU, passes=PASSES, data="random", metric="cosine", max_drop="0.05")
    assert not result.recipe.steps and result.report["measured"] is None
    rejected = [e for e in result.context.log if "not measurably faster" in (e["outcome"] or "")]
    assert rejected
    assert rejected[0]["outcome"].startswith("not measurably faster: measured 1.000 ms against its parent's 1.000 ms")
    assert any("not measurably faster" in note for note in result.report["notes"])


def test_a_simulated_target_accepts_on_the_cost_model(tiny, monkeypatch):
    def never(self, parent, child):
        raise AssertionError("a simulated target is never timed")
    monkeypatch.setattr(MeasuredSteps, "compare", never)
    result = optimize(tiny, "npu-p32", passes=PASSES, data="random", metric="cosine", max_drop="0.05")
    assert result.recipe.steps
    assert all(s["accepted_on"] == "cost model" and s["measured"] is None for s in result.report["steps"])


def test_the_report_says_when_a_measured_targets_kernels_come_from_another_machine(tiny, monkeypatch):
    monkeypatch.setattr(MeasuredSteps, "compare", _fake_compare(lambda parent, child: False))
    monkeypatch.setattr(optimize_module, "measured_elsewhere", lambda target: "Some Other CPU; 64 cores")
    notes = optimize(tiny, CPU, passes=PASSES, data="random", metric="cosine", max_drop="0.05").report["notes"]
    assert any(note.startswith("cpu-ort's kernels were measured on another machine (Some Other CPU; 64 cores)")
               for note in notes)
    monkeypatch.setattr(optimize_module, "measured_elsewhere", lambda target: None)
    notes = optimize(tiny, CPU, passes=PASSES, data="random", metric="cosine", max_drop="0.05").report["notes"]
    assert not any("another machine" in note for note in notes)
