"""The constraints a search result must meet: accuracy and memory budgets.

The accuracy budget is a maximum drop of the chosen metric against the
original model on the evaluation split, cumulative over every rewrite: in the
metric's own units ("1.0" is one point of top-1) or relative to the
original's score ("1%"), like `max-degradation` in Olive and
`tolerable_loss` in Intel Neural Compressor. Memory budgets bound parameter
bytes and peak activation bytes (as the model stores them: float32 here).

Each built-in metric has its own default budget, because one number cannot
mean the same thing in percent, in a cosine and in decibels:
- top1, agreement: 1 point (of 100), the usual "at most 1% top-1 loss";
- cosine: 0.01 (outputs may turn from 1.0 to 0.99), a 1-point budget's size
  in cosine terms; 1 or more cannot bind (a cosine of 0 means unrelated outputs);
- sqnr: 3 dB, half the 6.02 dB one bit of precision is worth: the rewritten
  model's quantization noise may at most double against the original's.
A plug-in metric's units are its own: it has no default, the budget must be given.
A budget that cannot bind (it admits the worst value the metric can take) is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import TailorError

DEFAULT_MAX_DROP = {"top1": "1", "agreement": "1", "cosine": "0.01", "sqnr": "3"}
_UNITS = {"top1": "points", "agreement": "points", "cosine": "", "sqnr": "dB"}  # the metric's own units of a drop


@dataclass(frozen=True)
class AccuracyBudget:
    amount: float
    relative: bool  # a percentage of the original score

    def allowed_drop(self, original_value: float) -> float:
        return abs(original_value) * self.amount / 100 if self.relative else self.amount

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.relative else f"{self.amount:g} points"

    def to_dict(self) -> dict:
        return {"amount": self.amount, "relative": self.relative}


def default_max_drop(metric: str) -> str:
    """The budget a metric gets when none is given (see the module docstring)."""
    if metric not in DEFAULT_MAX_DROP:
        raise TailorError(f"metric '{metric}' has no default budget (its units are its own): give --max-drop "
                          "in its units, or as a percentage of the original's score (e.g. 1%)")
    return DEFAULT_MAX_DROP[metric]


def drop_units(metric: str) -> str:
    """How a drop of `metric` is counted: "points", "dB", or "" (unitless and plug-in metrics)."""
    return _UNITS.get(metric, "")


def check_binds(metric: str, budget: AccuracyBudget, original_value: float, allowed: float) -> None:
    """Refuse a budget that admits the worst value `metric` can take: it would check nothing."""
    if metric == "cosine" and allowed >= 1:
        raise TailorError(f"--max-drop {budget} lets cosine fall by {allowed:g}, from {original_value:.4g} to "
                          f"{original_value - allowed:.4g}: a cosine of 0 or less means unrelated outputs, so this "
                          f"budget cannot bind; a cosine drop is a fraction of 1 (default "
                          f"{DEFAULT_MAX_DROP['cosine']})")
    if metric in ("top1", "agreement") and allowed >= original_value > 0:
        raise TailorError(f"--max-drop {budget} lets {metric} fall by {allowed:g} points from "
                          f"{original_value:.2f}%, to 0 or below: this budget cannot bind; {metric} drops in "
                          f"points of 100 (default {DEFAULT_MAX_DROP[metric]})")
    if metric == "sqnr" and not math.isfinite(original_value):
        raise TailorError("sqnr of the original against itself is infinite when judged in fp32, so a drop from it "
                          "cannot be measured: judge in int8 (--precision int8), where the original has quantization "
                          "noise, or use --metric cosine")


def parse_max_drop(text: str) -> AccuracyBudget:
    raw = str(text).strip()
    relative = raw.endswith("%")
    try:
        amount = float(raw[:-1] if relative else raw)
    except ValueError:
        raise TailorError(f"--max-drop '{text}' is not a number of points (e.g. 1.0) or a percentage (e.g. 1%)") \
            from None
    if not math.isfinite(amount):  # float() reads 'nan' and 'inf', which no comparison can budget
        raise TailorError(f"--max-drop must be a finite number of points or a percentage, got {text}")
    if amount < 0:
        raise TailorError(f"--max-drop must not be negative, got {text}")
    return AccuracyBudget(amount, relative)


@dataclass(frozen=True)
class Constraints:
    accuracy: AccuracyBudget | None = None
    max_param_bytes: int | None = None
    max_activation_bytes: int | None = None

    def memory_violation(self, param_bytes: int, activation_bytes: int) -> str | None:
        if self.max_param_bytes is not None and param_bytes > self.max_param_bytes:
            return f"parameters {param_bytes:,} B over the budget of {self.max_param_bytes:,} B"
        if self.max_activation_bytes is not None and activation_bytes > self.max_activation_bytes:
            return f"peak activations {activation_bytes:,} B over the budget of {self.max_activation_bytes:,} B"
        return None
