"""Metrics: how good a model's outputs are, against labels or against the original model's outputs.

Every metric maps (outputs, dataset, reference outputs, output name) to a
`Score` with a 95 % confidence interval (see `intervals.py`). Outputs are
dicts from output name to an array with one row per sample, in graph-output
order; the original model's outputs are paired with a variant's by position,
since a rewrite may rename an output.

Built-in metrics:
- `top1` (%): how often the argmax of the class scores is the label. Needs labels.
- `agreement` (%): how often the argmax equals the original model's argmax.
  Steadier than comparing two top-1 figures: it counts only the samples
  whose prediction changed, and needs no labels.
- `cosine`: mean over samples of the cosine similarity between the flattened
  outputs and the original's (1.0 = same direction).
- `sqnr` (dB): signal-to-quantization-noise ratio, 10 log10(sum ref^2 /
  sum (out - ref)^2) over all samples; inf when the outputs are identical.
  The ratio of totals, not a mean of per-sample dB, which one sample that
  happens to match exactly would make infinite.

top1 and agreement read class scores (logits or probabilities: only the
argmax matters) from the first graph output, or the one named by `output`;
cosine and sqnr compare every output (all of them concatenated per sample)
unless `output` names one.

Plug-in metrics, `--metric module:function`: the module is imported (from
`sys.path`, or else the current directory: importing runs its top-level
code, so only name a module you trust) and the function called as

    function(outputs: dict[str, np.ndarray], dataset: Dataset,
             reference_outputs: dict[str, np.ndarray] | None) -> result

where `outputs` holds every graph output of the evaluated model ([N, ...]
each), `dataset` is the `Dataset` it ran on (`.inputs`, `.labels` or None,
`.classes`), and `reference_outputs` the original model's outputs when a
reference was given. The result is one of:
- a number (higher is better), or `(number, higher_is_better)`;
- a 1-D array of N per-sample values, or `(array, higher_is_better)`: the
  score is their mean, with a bootstrap interval.
A single number carries no per-sample spread, so its score has no
confidence interval; return per-sample values to get one. A plug-in that
cannot be imported, is not callable, raises (`SystemExit` included), or
returns anything else is a `MetricError` naming it and the underlying error.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..errors import DataError, MetricError
from .data import Dataset
from .intervals import BOOTSTRAP_RESAMPLES, bootstrap_interval, wilson_interval
from .score import Score

Outputs = Mapping[str, np.ndarray]
BOOTSTRAP = f"bootstrap ({BOOTSTRAP_RESAMPLES} resamples)"


@dataclass(frozen=True)
class Metric:
    """A named metric: what it needs, and the function computing its `Score`."""

    name: str
    needs_labels: bool
    needs_reference: bool
    compute: Callable[[Outputs, Dataset, Outputs | None, str | None], Score]

    def check(self, dataset: Dataset, has_reference: bool) -> None:
        """Raise before any model runs if this metric cannot be computed on `dataset`."""
        if self.needs_labels and dataset.labels is None:
            raise MetricError(f"{self.name} needs labels, and {dataset.description} has none; "
                              f"compare against the original model instead (agreement, cosine, sqnr)")
        if self.needs_reference and not has_reference:
            raise MetricError(f"{self.name} compares a model's outputs with the original model's: "
                              f"give the original as the reference (--reference)")

    def __call__(self, outputs: Outputs, dataset: Dataset, reference: Outputs | None = None,
                 output: str | None = None) -> Score:
        self.check(dataset, reference is not None)
        for name, array in list(outputs.items()) + list((reference or {}).items()):
            if array.ndim == 0 or array.shape[0] != len(dataset):
                raise MetricError(f"output '{name}' has shape {list(array.shape)}, not one row for each of "
                                  f"the {len(dataset)} samples")
        return self.compute(outputs, dataset, reference, output)


# -- picking outputs ----------------------------------------------------------------------


def _position(outputs: Outputs, output: str | None) -> int:
    if output is None:
        return 0
    names = list(outputs)
    if output not in outputs:
        raise MetricError(f"the model has no output '{output}'; its outputs are: {', '.join(names)}")
    return names.index(output)


def _at(outputs: Outputs, position: int, whose: str) -> tuple[str, np.ndarray]:
    items = list(outputs.items())
    if position >= len(items):
        raise MetricError(f"the {whose} has {len(items)} output(s), not the {position + 1} this metric reads")
    return items[position]


def is_class_scores(array: np.ndarray) -> bool:
    """Whether `array` reads as class scores [N, K] (K >= 2; trailing 1s, as in [N, K, 1, 1], allowed)."""
    return array.ndim >= 2 and array.shape[1] >= 2 and all(d == 1 for d in array.shape[2:])


def predictions(name: str, array: np.ndarray) -> tuple[np.ndarray, int]:
    """(argmax class per sample, number of classes) of a class-score output."""
    if not is_class_scores(array):
        raise MetricError(f"output '{name}' has per-sample shape {list(array.shape[1:])}; top1 and agreement "
                          f"need class scores [N, K] with K >= 2 (name another output to read)")
    scores = array.reshape(array.shape[0], array.shape[1])
    return scores.argmax(axis=1), scores.shape[1]


def _flattened_pairs(outputs: Outputs, reference: Outputs, output: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The model's and the original's outputs as float64 [N, D] rows, paired by position."""
    if output is not None:
        positions = [_position(outputs, output)]
    else:
        if len(outputs) != len(reference):
            raise MetricError(f"the model has {len(outputs)} outputs and the original {len(reference)}; "
                              f"name the output to compare")
        positions = range(len(outputs))
    mine, theirs = [], []
    for position in positions:
        name, array = _at(outputs, position, "model")
        ref_name, ref = _at(reference, position, "original model")
        if array.shape != ref.shape:
            raise MetricError(f"output '{name}' has shape {list(array.shape)}, the original's '{ref_name}' "
                              f"{list(ref.shape)}")
        mine.append(array.reshape(len(array), -1).astype(np.float64))
        theirs.append(ref.reshape(len(ref), -1).astype(np.float64))
    return np.concatenate(mine, axis=1), np.concatenate(theirs, axis=1)


# -- built-in metrics ---------------------------------------------------------------------


def proportion_score(name: str, hits: np.ndarray) -> Score:
    """The share of true `hits` in percent, with its Wilson interval."""
    successes, n = int(hits.sum()), len(hits)
    low, high = wilson_interval(successes, n)
    return Score(100.0 * successes / n, True, n, 100.0 * low, 100.0 * high, name, "%", "Wilson",
                 100.0 * hits.astype(np.float64))


def _top1(outputs: Outputs, dataset: Dataset, reference: Outputs | None, output: str | None) -> Score:
    name, array = _at(outputs, _position(outputs, output), "model")
    predicted, classes = predictions(name, array)
    if dataset.labels.max() >= classes:
        raise DataError(f"{dataset.description}: labels go up to {int(dataset.labels.max())}, but output "
                        f"'{name}' scores {classes} classes (0-{classes - 1})")
    return proportion_score("top1", predicted == dataset.labels)


def _agreement(outputs: Outputs, dataset: Dataset, reference: Outputs | None, output: str | None) -> Score:
    position = _position(outputs, output)
    mine = predictions(*_at(outputs, position, "model"))[0]
    theirs = predictions(*_at(reference, position, "original model"))[0]
    return proportion_score("agreement", mine == theirs)


def per_sample_cosine(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair; two all-zero rows count as identical (1), one as unrelated (0)."""
    norms = np.linalg.norm(mine, axis=1) * np.linalg.norm(theirs, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.einsum("ij,ij->i", mine, theirs) / norms
    zero_mine, zero_theirs = ~mine.any(axis=1), ~theirs.any(axis=1)
    cosine = np.where(zero_mine & zero_theirs, 1.0, np.where(zero_mine | zero_theirs, 0.0, cosine))
    return np.clip(cosine, -1.0, 1.0)  # rounding can overshoot 1 by an ulp


def _cosine(outputs: Outputs, dataset: Dataset, reference: Outputs | None, output: str | None) -> Score:
    cosine = per_sample_cosine(*_flattened_pairs(outputs, reference, output))
    low, high = bootstrap_interval(cosine)
    return Score(float(cosine.mean()), True, len(cosine), low, high, "cosine", "", BOOTSTRAP, cosine)


def sqnr_db(signal, noise):
    """10 log10(signal / noise), inf where the noise is zero (elementwise on arrays)."""
    signal, noise = np.asarray(signal, dtype=np.float64), np.asarray(noise, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(noise == 0, np.inf, 10.0 * np.log10(signal / np.where(noise == 0, 1.0, noise)))


def _sqnr(outputs: Outputs, dataset: Dataset, reference: Outputs | None, output: str | None) -> Score:
    mine, theirs = _flattened_pairs(outputs, reference, output)
    energies = np.stack([(theirs ** 2).sum(axis=1), ((mine - theirs) ** 2).sum(axis=1)], axis=1)
    value = float(sqnr_db(*energies.sum(axis=0)))
    if math.isinf(value) and value > 0:  # identical outputs: every resample is identical too
        low = high = value
    else:
        low, high = bootstrap_interval(energies, lambda sums, n: sqnr_db(sums[:, 0], sums[:, 1]))
    return Score(value, True, len(mine), low, high, "sqnr", "dB", BOOTSTRAP)


TOP1 = Metric("top1", needs_labels=True, needs_reference=False, compute=_top1)
AGREEMENT = Metric("agreement", needs_labels=False, needs_reference=True, compute=_agreement)
COSINE = Metric("cosine", needs_labels=False, needs_reference=True, compute=_cosine)
SQNR = Metric("sqnr", needs_labels=False, needs_reference=True, compute=_sqnr)
BUILTIN = {m.name: m for m in (TOP1, AGREEMENT, COSINE, SQNR)}
FIDELITY = ("agreement", "cosine", "sqnr")  # against the original model; no labels needed


# -- plug-ins -----------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _import(module_name: str):
    # A console script's sys.path does not hold the current directory, where a
    # user's metric file usually sits; look there last, and only during the import.
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    try:
        return importlib.import_module(module_name)
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def load_plugin(spec: str) -> Metric:
    """The metric `module:function` (see the module docstring for the contract)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise MetricError(f"metric '{spec}' is not module:function")
    try:
        module = _import(module_name)
    except SystemExit as exc:  # not an Exception: it would end onnx-tailor with its code and no word
        raise MetricError(f"metric plug-in '{spec}': importing {module_name} called sys.exit({exc.code!r})") from None
    except Exception as exc:  # the module is the user's code: any failure in it is theirs to see
        raise MetricError(f"metric plug-in '{spec}': cannot import {module_name}: {_one_line(exc)}") from exc
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise MetricError(f"metric plug-in '{spec}': {module_name} has no attribute '{attribute}'")
    if not callable(function):
        raise MetricError(f"metric plug-in '{spec}': {attribute} is a {type(function).__name__}, not a function")

    def compute(outputs: Outputs, dataset: Dataset, reference: Outputs | None, output: str | None) -> Score:
        try:
            result = function(dict(outputs), dataset, None if reference is None else dict(reference))
        except SystemExit as exc:
            raise MetricError(f"metric plug-in '{spec}' called sys.exit({exc.code!r})") from None
        except Exception as exc:
            raise MetricError(f"metric plug-in '{spec}' raised {_one_line(exc)}") from exc
        return _plugin_score(spec, result, len(dataset))

    return Metric(spec, needs_labels=False, needs_reference=False, compute=compute)


def _plugin_score(spec: str, result, n: int) -> Score:
    higher_is_better = True
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], (bool, np.bool_)):
        result, higher_is_better = result[0], bool(result[1])
    if isinstance(result, (bool, np.bool_)):  # almost certainly a mistake, not a score of 0 or 1
        raise MetricError(f"metric plug-in '{spec}' returned a bool; expected a number or per-sample values")
    if isinstance(result, (list, np.ndarray)) and np.ndim(result) == 1:
        values = np.asarray(result, dtype=np.float64)
        if len(values) != n or not np.isfinite(values).all():
            raise MetricError(f"metric plug-in '{spec}' returned {len(values)} per-sample values "
                              f"({'some not finite' if len(values) == n else f'for {n} samples'})")
        low, high = bootstrap_interval(values)
        return Score(float(values.mean()), higher_is_better, n, low, high, spec, "", BOOTSTRAP, values)
    if isinstance(result, (int, float, np.integer, np.floating)) or (
            isinstance(result, np.ndarray) and result.ndim == 0 and np.issubdtype(result.dtype, np.number)):
        value = float(result)
        if math.isnan(value):
            raise MetricError(f"metric plug-in '{spec}' returned NaN")
        return Score(value, higher_is_better, n, None, None, spec)
    raise MetricError(f"metric plug-in '{spec}' returned {type(result).__name__}; expected a number, a 1-D array "
                      f"of per-sample values, or (either, higher_is_better)")


# -- lookup -------------------------------------------------------------------------------


def get_metric(name: str) -> Metric:
    """A built-in metric by name, or a plug-in `module:function` (imported now)."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" in name:
        return load_plugin(name)
    raise MetricError(f"unknown metric '{name}'; the metrics are {', '.join(BUILTIN)}, "
                      f"or a plug-in as module:function")


def default_metric(dataset: Dataset, has_reference: bool) -> str:
    """top1 when the data has labels, else agreement with the original model."""
    if dataset.labels is not None:
        return "top1"
    if has_reference:
        return "agreement"
    raise MetricError(f"{dataset.description} has no labels and there is no reference model: nothing to measure "
                      f"against; give data with labels, or the original model as the reference")
