"""Confidence intervals: Wilson against published values, the bootstrap, the budget warning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_tailor import accuracy
from onnx_tailor.accuracy.intervals import interval_warnings, z_value


@pytest.mark.parametrize("successes, n, low, high", [
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_published_values(successes, n, low, high):
    got = accuracy.wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_by_hand_for_300_samples_at_90_percent():
    # p = 0.9, z = 1.959964: center = (p + z^2/2n) / (1 + z^2/n) = 0.894943,
    # half = z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2) = 0.034109
    low, high = accuracy.wilson_interval(270, 300)
    assert (low, high) == pytest.approx((0.894943 - 0.034109, 0.894943 + 0.034109), abs=2e-6)
    assert (high - low) / 2 == pytest.approx(0.0341, abs=1e-4)  # about +-3.4 points
    assert z_value() == pytest.approx(1.959964, abs=1e-6)


def test_wilson_stays_inside_zero_and_one_and_is_not_empty_at_the_ends():
    # At p = 1 the lower bound simplifies to n / (n + z^2): 50 / 53.841459 = 0.928652.
    assert accuracy.wilson_interval(50, 50) == (pytest.approx(0.928652, abs=1e-6), 1.0)
    assert accuracy.wilson_interval(0, 50) == (0.0, pytest.approx(1 - 0.928652, abs=1e-6))


def test_bootstrap_is_seeded_and_about_as_wide_as_the_normal_interval():
    values = np.random.default_rng(1).normal(5.0, 2.0, size=400)
    low, high = accuracy.bootstrap_interval(values)
    assert (low, high) == accuracy.bootstrap_interval(values)
    assert low < values.mean() < high
    normal_half = z_value() * values.std(ddof=1) / math.sqrt(len(values))
    assert (high - low) / 2 == pytest.approx(normal_half, rel=0.1)


def test_bootstrap_of_a_ratio_of_sums():
    # column 0 / column 1 summed over samples: every resample of constant rows gives exactly 2
    rows = np.tile([4.0, 2.0], (50, 1))
    assert accuracy.bootstrap_interval(rows, lambda sums, n: sums[:, 0] / sums[:, 1]) == (2.0, 2.0)


def score(low, high, n=300, name="top1", unit="%"):
    return accuracy.Score((low + high) / 2, True, n, low, high, name, unit, "Wilson")


def test_interval_warning_when_the_interval_is_wider_than_the_budget():
    wide = score(86.1, 92.9)  # +-3.4 points on 300 samples
    warning = accuracy.interval_warning(wide, budget=1.0)
    assert warning == ("top1: the 95% interval is +-3.40 points on 300 samples, wider than the budget of 1 point: "
                       "a change that small cannot be told from noise (about 3468 samples would narrow it to the "
                       "budget)")
    assert accuracy.interval_warning(wide, budget=4.0) is None
    assert "no confidence interval" in accuracy.interval_warning(
        accuracy.Score(0.5, True, 10, None, None, "mod:iou"), budget=0.1)


def test_interval_warnings_label_only_the_scores_that_warn():
    wide, narrow = score(86.1, 92.9), score(89.9, 90.1, name="agreement")
    labelled = [("A: ", wide), ("B: ", None), ("B against A: ", narrow)]
    assert interval_warnings(labelled, 1.0) == ["A: " + accuracy.interval_warning(wide, 1.0)]
    assert interval_warnings(labelled, 0.05) == ["A: " + accuracy.interval_warning(wide, 0.05),
                                                 "B against A: " + accuracy.interval_warning(narrow, 0.05)]
    assert interval_warnings(labelled, None) == []  # no budget, no warning
    with pytest.raises(ValueError, match="a budget must be positive"):
        interval_warnings(labelled, 0)
