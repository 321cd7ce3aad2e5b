"""How a candidate is judged against the budget: the point rule, and the margin rule for noisy drops."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_tailor.accuracy import Score, drop_standard_error
from onnx_tailor.search.context import SearchData


def _top1(hits: list[int]) -> Score:
    values = 100.0 * np.asarray(hits, dtype=np.float64)
    return Score(values.mean(), True, len(values), None, None, "top1", "%", "Wilson", values)


class _Scores:
    """An evaluator that returns prepared scores by model."""

    def __init__(self, scores: dict):
        self.scores = scores

    def batches(self, model, dataset):
        return True

    def score(self, model, dataset, metric, reference=None, batches=None):
        return self.scores[model]


ORIGINAL = _top1([1] * 98 + [0] * 2)
ONE_LOST = _top1([0] + [1] * 97 + [0] * 2)  # one sample flipped to wrong: exactly the 1-point budget


def _data(acceptance: str) -> SearchData:
    data = SearchData({}, "selection", "test", "top1", _Scores({"original": ORIGINAL, "candidate": ONE_LOST}),
                      ORIGINAL, 1.0, acceptance=acceptance)
    return data


def test_the_point_rule_takes_a_drop_at_the_budget_and_the_margin_rule_charges_its_noise():
    assert _data("point").judge("candidate", "original").over_budget is None
    judgement = _data("margin").judge("candidate", "original")
    assert judgement.drop == pytest.approx(1.0)
    assert judgement.over_budget and "+1.00 for its uncertainty" in judgement.over_budget


def test_the_test_split_is_judged_by_the_point_rule_whatever_the_search_used():
    assert _data("margin").judge("candidate", "original", ORIGINAL, on_test=True).over_budget is None


def test_the_paired_standard_error_counts_only_the_samples_that_changed():
    # One flipped sample in 100: differences are 100 once and 0 elsewhere.
    assert drop_standard_error(ORIGINAL, ONE_LOST) == pytest.approx(np.std([100] + [0] * 99, ddof=1) / 10)
    assert drop_standard_error(ORIGINAL, ORIGINAL) == 0.0
    no_samples = Score(98.0, True, 100, None, None, "top1", "%", "Wilson")
    assert drop_standard_error(no_samples, ONE_LOST) == 0.0
