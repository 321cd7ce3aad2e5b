"""Splitting data: what passes may fit weights on, what the search judges with, what the result is judged on.

A lossy pass that fits weights on the samples it is then judged on looks better
than it is, and a search that picks among many candidates by their score on
some samples looks better on those samples than it is (it picks the lucky
ones). So `optimize` splits its data once, by a seeded permutation, into three
disjoint parts (`split_three`): calibration (passes read it), selection (the
search's accuracy checks) and test (read only for the final model and the
original, after the search has chosen). `apply --data` needs only the first
(`split_dataset`, calibration and evaluation). Every sample lands in exactly
one part; the same data and seed always give the same split; each part keeps
the samples in their original order, so batches (and float rounding) do not
depend on the seed. The calibration part of a split depends only on the seed
and its own fraction: a recipe's lossy steps replay on the same samples
whatever the other fractions were.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .data import Dataset

DEFAULT_CALIBRATION = 0.5
# calibration, selection, test. The judging parts get more: a fit reads every output pixel of
# every sample (thousands of rows per image), a metric only one value per sample.
DEFAULT_SPLIT = (0.3, 0.35, 0.35)


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


@dataclass(frozen=True, eq=False)
class SearchSplit:
    """Three disjoint parts of one dataset: fit on `calibration`, choose on `selection`, report on `test`."""

    calibration: Dataset
    selection: Dataset
    test: Dataset
    fractions: tuple[float, float, float]
    seed: int

    def describe(self) -> str:
        return (f"calibration {len(self.calibration)}, selection {len(self.selection)}, test {len(self.test)} "
                f"samples (fractions {'/'.join(f'{f:g}' for f in self.fractions)}, seed {self.seed})")


def parse_split(text: str | tuple | list) -> tuple[float, float, float]:
    """'0.3,0.35,0.35' (or a 3-sequence) -> three positive fractions that add up to 1."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        fractions = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        fractions = ()
    if len(fractions) != 3 or not all(0 < f < 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split '{text}' is not three fractions in (0, 1) for calibration, selection and test "
                        "that add up to 1 (e.g. 0.3,0.35,0.35)")
    return fractions  # type: ignore[return-value]


def split_three(dataset: Dataset, fractions: tuple[float, float, float] = DEFAULT_SPLIT, seed: int = 0) -> SearchSplit:
    """Split `dataset` into disjoint calibration, selection and test parts (see the module docstring)."""
    n = len(dataset)
    calibration = calibration_count(n, fractions[0])
    selection = int(fractions[1] * n + 0.5)
    test = n - calibration - selection
    if selection < 1 or test < 1:
        raise DataError(f"{n} samples split {'/'.join(f'{f:g}' for f in fractions)} leave the selection or the "
                        "test part empty; every part needs at least one sample")
    order = np.random.default_rng(seed).permutation(n)
    bounds = {"calibration": order[:calibration], "selection": order[calibration:calibration + selection],
              "test": order[calibration + selection:]}
    parts = {name: dataset.subset(np.sort(indices), f"{dataset.description} [{name} {len(indices)} of {n}, "
                                                    f"seed {seed}]")
             for name, indices in bounds.items()}
    return SearchSplit(parts["calibration"], parts["selection"], parts["test"], tuple(fractions), seed)
