"""The constraints a search result must meet: accuracy and memory budgets.

The accuracy budget is a maximum drop of the chosen metric against the
original model on the evaluation split, cumulative over every rewrite: in the
metric's own units ("1.0" is one point of top-1) or relative to the
original's score ("1%"), like `max-degradation` in Olive and
`tolerable_loss` in Intel Neural Compressor. Memory budgets bound parameter
bytes and peak activation bytes (as the model stores them: float32 here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import TailorError


@dataclass(frozen=True)
class AccuracyBudget:
    amount: float
    relative: bool  # a percentage of the original score

    def allowed_drop(self, original_value: float) -> float:
        return abs(original_value) * self.amount / 100 if self.relative else self.amount

    def __str__(self) -> str:
        return f"{self.amount:g}%" if self.relative else f"{self.amount:g} points"


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
