"""The calibration / evaluation split: data a pass may fit weights on, and data only for judging.

A lossy pass that fits weights on the samples it is then judged on looks better
than it is. So every dataset is split once, by a seeded permutation, into a
calibration part (passes read it) and an evaluation part (only metrics read
it); the two never share a sample and together hold every sample. The same
data and seed always give the same split; each part keeps the samples in
their original order, so batches (and float rounding) do not depend on the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .data import Dataset

DEFAULT_CALIBRATION = 0.5


@dataclass(frozen=True, eq=False)
class Split:
    calibration: Dataset
    evaluation: Dataset
    calibration_indices: np.ndarray  # positions in the dataset that was split
    evaluation_indices: np.ndarray
    seed: int


def calibration_count(n: int, calibration: float | int) -> int:
    """How many of `n` samples go to calibration: a count as is, a fraction rounded half up."""
    if isinstance(calibration, (bool, np.bool_)):
        raise DataError(f"calibration is a fraction in (0, 1) or a sample count, not {calibration}")
    if isinstance(calibration, (int, np.integer)):
        count = int(calibration)
        what = f"a calibration count of {count}"
    else:
        fraction = float(calibration)
        if not 0.0 < fraction < 1.0:
            raise DataError(f"calibration fraction {fraction:g} is not between 0 and 1 (or give a sample count)")
        count = int(fraction * n + 0.5)
        what = f"a calibration fraction of {fraction:g} ({count} samples)"
    if not 1 <= count <= n - 1:
        raise DataError(f"{what} of {n} samples leaves one part empty; both parts need at least one sample")
    return count


def split_dataset(dataset: Dataset, calibration: float | int = DEFAULT_CALIBRATION, seed: int = 0) -> Split:
    """Split `dataset` into disjoint calibration and evaluation parts (see the module docstring).

    `calibration` is a fraction of the samples (float, default 0.5) or a count (int).
    """
    n = len(dataset)
    count = calibration_count(n, calibration)
    order = np.random.default_rng(seed).permutation(n)
    calibration_indices = np.sort(order[:count])
    evaluation_indices = np.sort(order[count:])
    tag = f"of {n}, seed {seed}"
    return Split(
        dataset.subset(calibration_indices, f"{dataset.description} [calibration {count} {tag}]"),
        dataset.subset(evaluation_indices, f"{dataset.description} [evaluation {n - count} {tag}]"),
        calibration_indices, evaluation_indices, seed,
    )
