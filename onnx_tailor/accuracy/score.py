"""`Score`: one metric's value with its direction, sample count and 95 % confidence interval.

Proportions (top1, agreement) are in percent, so that a budget such as "at
most 1 point of top-1 drop" is in the same unit as the score; SQNR is in dB;
cosine and plug-in values are unitless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Score:
    value: float
    higher_is_better: bool
    n: int  # samples the value was computed on
    ci_low: float | None  # 95 % confidence interval; None when the metric gives no per-sample spread
    ci_high: float | None
    name: str
    unit: str = ""  # "%", "dB" or ""
    ci_method: str = ""  # how the interval was computed, e.g. "Wilson"
    # The per-sample values whose mean is `value` (in its units), when the metric is such a mean:
    # what a paired comparison of two models on the same samples needs.
    per_sample: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def resolution(self) -> float | None:
        """The change one sample makes to a proportion (100/n points); None for a continuous metric."""
        return 100.0 / self.n if self.ci_method == "Wilson" else None

    @property
    def half_width(self) -> float | None:
        """Half the interval's width: the +- a reader takes from it."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2

    def _number(self, value: float) -> str:
        digits = 2 if self.unit in ("%", "dB") else 4
        return f"{value:.{digits}f}"

    @property
    def shown(self) -> str:
        """The value with its unit: `99.17%`, `31.20 dB`, `0.9987`."""
        return self._number(self.value) + (" dB" if self.unit == "dB" else self.unit)

    @property
    def interval(self) -> str:
        """`[97.58, 99.72]`, or `[no CI]` when there is none."""
        if self.ci_low is None or self.ci_high is None:
            return "[no CI]"
        return f"[{self._number(self.ci_low)}, {self._number(self.ci_high)}]"

    def format(self) -> str:
        """`top1 99.17% (95% CI [97.58, 99.72], Wilson, n=360)`."""
        if self.ci_low is None:
            return f"{self.name} {self.shown} (n={self.n}, no confidence interval)"
        return f"{self.name} {self.shown} (95% CI {self.interval}, {self.ci_method}, n={self.n})"

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict:
        """JSON-ready: non-finite numbers (an SQNR of identical outputs is inf) become strings."""
        def number(x):
            return x if x is None or math.isfinite(x) else str(x)

        return {"name": self.name, "value": number(self.value), "unit": self.unit,
                "higher_is_better": self.higher_is_better, "n": self.n, "ci_low": number(self.ci_low),
                "ci_high": number(self.ci_high), "ci_level": 0.95 if self.ci_low is not None else None,
                "ci_method": self.ci_method or None}
