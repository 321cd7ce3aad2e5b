"""Re-anchoring a measured target's cost model to how fast this machine runs now.

A measured target's sweep (`cpu-ort.csv`) records kernel times at the speed
the host ran when the sweep was measured. A shared or virtual host does not
keep that speed: on the machine cpu-ort.csv was measured on, an idle digits
model ran 0.359 ms at 11:39 and 0.449 ms at 13:12 the same day, with nothing
of ours running, and every held-out model moved by about the same factor. A
cost model fitted on the CSV then predicts absolute times 5-25% off by one
common factor, though it ranks models as well as ever.

Re-anchoring measures that factor: a fixed set of anchor kernels, taken
from the CSV by entry id alone (never from any model a user scores), is
re-timed now with the method the sweep used (`measure.measure_in_network`,
the profiler's bias and the per-run overhead measured again), and the
median of now / then over the anchors scales every kernel the cost model
predicts (`CostModel.rescaled`); the per-run overhead is the one measured now.

What it corrects: the host's speed now against when the CSV was measured,
one factor for all kernels. What it does not: a kernel the cost model gets
wrong at any speed (a shape the sweep never showed, a fusion it does not
know) stays as wrong, and a host whose kernels slow down unevenly (caches
shared with a neighbour hurt large kernels more than small ones) is
corrected only on average. Rankings of models do not change (one factor
scales every kernel; only the overhead, one constant per model, moves), so
the search never needs it: it is for absolute times (`onnx-tailor cost
--anchor`, `bench/costmodel_fidelity.py`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from .measure import machine_description, measure_in_network, measure_overhead, measure_profiler_bias
from .regressor import CostModel, Measurements, cost_model_for, read_measurements
from .sweep import SweepEntry
from .target import Target, TargetError

ANCHOR_COUNT = 32
# Kernels longer than this take seconds to re-time (the sweep's method runs each network 70 times); kernels
# shorter than this are a few profiler events whose now / then scattered 0.5-2x in one re-timing on an idle
# host (the floor's, absorbed by a neighbour, have no time of their own): neither is an anchor.
ANCHOR_MIN_S, ANCHOR_MAX_S = 5e-6, 1e-3


def _order(entry_id: str) -> bytes:
    """A fixed pseudo-random order of ids, the same on every machine (not Python's salted hash)."""
    return hashlib.sha256(entry_id.encode()).digest()


def anchor_ids(measurements: Measurements, count: int | None = None) -> list[str]:
    """`count` kernels of `measurements` to re-time, chosen by id alone: the sweep's ops in turn (conv,
    depthwise, element-wise, ... by how many rows each has, at least one each while `count` allows), within an op in the
    fixed order of their ids' SHA-256, which spreads them over the sweep's sizes as the sweep spreads
    its entries. Rows outside `ANCHOR_MIN_S`..`ANCHOR_MAX_S` are left out."""
    count = ANCHOR_COUNT if count is None else count
    by_op: dict[str, list[str]] = {}
    for entry_id, latency in measurements.kernel_rows:
        if ANCHOR_MIN_S <= latency <= ANCHOR_MAX_S:
            by_op.setdefault(entry_id.partition(":")[0], []).append(entry_id)
    total = sum(len(ids) for ids in by_op.values())
    shares = {op: max(1, round(count * len(ids) / total)) for op, ids in sorted(by_op.items())}
    # Rounding up the small ops can overshoot `count`: take the excess from the largest shares, never an op's
    # last one (cutting the list by hash order instead once dropped every matmul).
    while sum(shares.values()) > count and max(shares.values()) > 1:
        shares[max(shares, key=lambda op: (shares[op], op))] -= 1
    if sum(shares.values()) > count:  # fewer anchors than ops: one each for the ops with the most rows
        shares = {op: 1 for op in sorted(shares, key=lambda op: (-len(by_op[op]), op))[:count]}
    chosen = [i for op, ids in by_op.items() for i in sorted(ids, key=_order)[:shares.get(op, 0)]]
    return sorted(chosen, key=_order)


@dataclass(frozen=True)
class Anchoring:
    """Anchor kernels re-timed now: `now_s[id]` against the CSV's time for that id, and the per-run
    overhead now. `factor_for(csv)` is the median of now / then over the anchors the CSV holds."""

    now_s: dict[str, float]
    overhead_s: float
    when: str = ""
    took_s: float = 0.0

    def ratios(self, measurements: Measurements) -> list[float]:
        then = dict(measurements.rows)
        return [now / then[i] for i, now in self.now_s.items() if i in then]

    def factor_for(self, measurements: Measurements) -> float | None:
        """How much slower (> 1) or faster this machine ran the anchors than when `measurements` were
        taken; None when no anchor is in them."""
        ratios = self.ratios(measurements)
        return float(np.median(ratios)) if ratios else None

    def rescale(self, cost_model: CostModel, measurements: Measurements) -> CostModel:
        factor = self.factor_for(measurements)
        if factor is None:
            raise TargetError(f"target {cost_model.target.name}: none of the {len(self.now_s)} anchor kernels is "
                              "in its measurements; nothing to re-anchor on")
        return cost_model.rescaled(factor, self.overhead_s)

    @classmethod
    def merged(cls, runs: list["Anchoring"]) -> "Anchoring":
        """Several re-timings as one (each anchor's and the overhead's mean over `runs`): anchors timed just
        before and just after something long bracket the host's speed while it ran."""
        ids = dict.fromkeys(i for run in runs for i in run.now_s)
        now = {i: float(np.mean([run.now_s[i] for run in runs if i in run.now_s])) for i in ids}
        return cls(now, float(np.mean([run.overhead_s for run in runs])), " / ".join(run.when for run in runs),
                   sum(run.took_s for run in runs))

    def to_dict(self) -> dict:
        return {"now_s": self.now_s, "overhead_s": self.overhead_s, "when": self.when, "took_s": self.took_s}

    @classmethod
    def from_dict(cls, row: dict) -> "Anchoring":
        return cls({str(k): float(v) for k, v in row["now_s"].items()}, float(row["overhead_s"]),
                   str(row.get("when", "")), float(row.get("took_s", 0.0)))


def measure_anchors(target: Target, measurements: Measurements, count: int | None = None) -> Anchoring:
    """Re-time `anchor_ids(measurements)` on `target` now, the way `measure.measure_entries` timed the
    sweep (the profiler's bias and the per-run overhead measured first): 7-10 s on an idle core."""
    if target.kind != "ort":
        raise TargetError(f"target {target.name} is {'simulated' if target.simulated else 'imported'}: only a "
                          "target measured with onnxruntime on this machine can be re-anchored here")
    start = time.perf_counter()
    bias = measure_profiler_bias(target)
    overhead = measure_overhead(target)
    now = {entry_id: measure_in_network(SweepEntry.from_id(entry_id), target, bias, overhead)
           for entry_id in anchor_ids(measurements, count)}
    return Anchoring(now, overhead, time.strftime("%Y-%m-%d %H:%M:%S"), round(time.perf_counter() - start, 2))


def anchored_cost_model(target: Target) -> tuple[CostModel, Anchoring, float]:
    """The target's cost model with its kernels scaled to this machine's speed now: (model, the anchors
    re-timed, the factor)."""
    path = target.measurements_path()
    if path is None:
        raise TargetError(f"target {target.name} has no measurements to re-anchor")
    measurements = read_measurements(path)
    anchoring = measure_anchors(target, measurements)
    return anchoring.rescale(cost_model_for(target), measurements), anchoring, anchoring.factor_for(measurements)


def measured_elsewhere(target: Target) -> str | None:
    """The machine a target's measurements were taken on, when it is not this one (as `costmodel measure`
    describes a machine: CPU, cores, kernel, onnxruntime, provider, threads); None for this machine, a
    simulated target, or a file that does not say. Two hosts of one cloud that describe their CPU alike
    still differ by their kernel build, and ran the same kernels 30% apart here."""
    path = target.measurements_path()
    if target.kind != "ort" or path is None:
        return None
    measured = read_measurements(path).comments.get("machine")
    return measured if measured and measured != machine_description(target) else None
