"""Confidence intervals for accuracy figures, and the warning when one is too wide to trust.

A small evaluation set is noisy: 90 % top-1 measured on 300 samples means
"somewhere between 86.1 % and 92.9 %" (95 % Wilson interval). Every score
therefore carries an interval and its sample count, computed here:

- proportions (top1, agreement): the Wilson score interval. Unlike the
  normal approximation p +- z*sqrt(p(1-p)/n) it stays inside [0, 1] and does
  not collapse to zero width at 0 % or 100 %, where a good model's agreement
  with its original sits.
- everything else (cosine, SQNR, per-sample plug-in scores): a percentile
  bootstrap over samples, 1000 resamples from a fixed seed, so that the same
  outputs always give the same interval. A statistic is any function of
  per-sample column sums (a mean, or a ratio of sums such as SQNR).

`interval_warning` says when an interval is wider than the change a user
wants to detect (e.g. a budget of 1 point of top-1 drop); `interval_warnings`
says it for each of several labelled scores.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Iterable

import numpy as np

from .score import Score

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
_RESAMPLE_CHUNK = 100  # resamples drawn at once: bounds memory at 100 x n counts


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard normal quantile: 1.96 for 95 %."""
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of the proportion successes / n, as fractions in [0, 1]."""
    if n <= 0:
        raise ValueError("a proportion needs at least one sample")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} is not a proportion")
    z = z_value(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At p = 0 (or 1) the lower (upper) bound is exactly p; float rounding must not move it.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def mean_of_sums(sums: np.ndarray, n: int) -> np.ndarray:
    """The bootstrap statistic for a mean: the first column's sum over n."""
    return sums[..., 0] / n


def bootstrap_interval(per_sample: np.ndarray, statistic: Callable[[np.ndarray, int], np.ndarray] = mean_of_sums,
                       confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over samples.

    `per_sample` is [n] or [n, k] (k per-sample quantities); each resample
    draws n samples with replacement, and `statistic(sums, n)` maps the
    resampled column sums [resamples, k] to one value per resample.
    """
    values = np.asarray(per_sample, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n = values.shape[0]
    if n == 0:
        raise ValueError("a bootstrap needs at least one sample")
    rng = np.random.default_rng(seed)
    estimates = []
    for start in range(0, resamples, _RESAMPLE_CHUNK):
        size = min(_RESAMPLE_CHUNK, resamples - start)
        # How often each sample is drawn in each resample: the column sums are then one matrix product.
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            estimates.append(statistic(counts @ values, n))
    estimates = np.concatenate(estimates)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def drop_interval(original: Score, candidate: Score) -> tuple[float, float] | None:
    """95% interval of the drop from `original` to `candidate` (positive is worse), paired by sample.

    Both scores must hold per-sample values on the same samples in the same order; the
    interval is a bootstrap of the per-sample differences, which is much narrower than the
    two scores' own intervals when most samples did not change. None without per-sample values.
    """
    if original.per_sample is None or candidate.per_sample is None or original.n != candidate.n:
        return None
    sign = 1.0 if original.higher_is_better else -1.0
    return bootstrap_interval(sign * (original.per_sample - candidate.per_sample))


def drop_standard_error(original: Score, candidate: Score) -> float:
    """Standard error of the paired drop (see `drop_interval`); 0 without per-sample values."""
    if original.per_sample is None or candidate.per_sample is None or original.n != candidate.n or original.n < 2:
        return 0.0
    differences = original.per_sample - candidate.per_sample
    return float(np.std(differences, ddof=1) / np.sqrt(len(differences)))


def interval_warning(score: Score, budget: float) -> str | None:
    """A warning when `score`'s interval is too wide to resolve a change of `budget`, else None.

    `budget` is in the score's own units (points for top1 and agreement, dB
    for SQNR). The interval is too wide when its half-width (half of high
    minus low) exceeds the budget: a change that small cannot be told from
    sampling noise. Half-widths shrink as 1/sqrt(n), which gives the number
    of samples that would bring it within the budget.
    """
    if budget <= 0:
        raise ValueError(f"a budget must be positive, not {budget}")

    def amount(x: float, number: str) -> str:
        units = {"%": " point" if x == 1 else " points", "dB": " dB"}  # a change in a percentage is in points
        return number + units.get(score.unit, "")

    limit = amount(budget, f"{budget:g}")
    if score.ci_low is None or score.ci_high is None:
        return (f"{score.name} has no confidence interval (n={score.n}): whether a change of {limit} is more "
                f"than noise cannot be judged")
    half = score.half_width
    if not math.isfinite(half) or half <= budget:
        return None
    needed = math.ceil(round(score.n * (half / budget) ** 2, 6))  # round: 3.4 may arrive as 3.4000000000000057
    return (f"{score.name}: the 95% interval is +-{amount(half, f'{half:.2f}')} on {score.n} samples, wider than "
            f"the budget of {limit}: a change that small cannot be told from noise (about {needed} samples "
            f"would narrow it to the budget)")


def interval_warnings(labelled_scores: Iterable[tuple[str, Score | None]], budget: float | None) -> list[str]:
    """`interval_warning` for each (label, score), its label put in front; only the scores that warn.

    No budget (None) warns of nothing; a missing score (None) is skipped.
    """
    if budget is None:
        return []
    found = ((label, interval_warning(score, budget)) for label, score in labelled_scores if score is not None)
    return [label + warning for label, warning in found if warning]
