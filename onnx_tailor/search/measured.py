"""Steps accepted on measurement: for a target measured on this machine, the search times what it accepts.

The cost model ranks candidates; for a target this machine runs (kind `ort`),
a step is accepted only when its model is measurably faster than its parent's.
Both models are timed side by side: in each round both run (a short median of
several runs each, the order alternating between rounds, so that a slow spell
of a busy machine hits both alike), at the target's fixed thread count, on
`run_clock`: the calling thread's CPU time for a one-thread target, which
other processes on a shared machine cannot lengthen. The
step is accepted when the child's median over rounds is at least
`MIN_MEASURED_GAIN` faster and the child was faster in most rounds
(`MIN_FASTER_SHARE`): a gain inside the noise is no gain. Other targets
(simulated, or a device out of reach) accept on the cost model alone. Since
the measurement decides, a candidate predicted faster by any margin is tried
on a measured target, not only one past the cost model's noise.

`along` turns the comparisons of a chosen path into the report's measured
figures: what the search already knows, without timing anything again.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..costmodel.measure import run_clock, session_for, time_session
from ..costmodel.target import Target
from ..ir import Model, seeded_inputs

MIN_MEASURED_GAIN = 0.01  # the child's median must be at least 1% under its parent's
MIN_FASTER_SHARE = 0.7  # ... and the child faster in at least this share of the rounds
ROUNDS = 7
RUNS_PER_ROUND = 5
SESSIONS_KEPT = 4  # a parent is compared with several children in a row: keep its session


@dataclass(frozen=True)
class Comparison:
    """A child model timed side by side with its parent."""

    parent_s: float  # median over rounds
    child_s: float
    faster_rounds: int  # rounds in which the child's median was under its parent's
    rounds: int

    @property
    def speedup(self) -> float:
        return self.parent_s / self.child_s

    @property
    def accepted(self) -> bool:
        return (self.child_s <= self.parent_s * (1 - MIN_MEASURED_GAIN)
                and self.faster_rounds >= math.ceil(MIN_FASTER_SHARE * self.rounds))

    def to_dict(self) -> dict:
        return {"parent_ms": self.parent_s * 1e3, "child_ms": self.child_s * 1e3, "speedup": self.speedup,
                "faster_rounds": self.faster_rounds, "rounds": self.rounds, "accepted": self.accepted}

    def describe(self) -> str:
        return (f"measured {self.child_s * 1e3:.3f} ms against its parent's {self.parent_s * 1e3:.3f} ms "
                f"({self.speedup:.3f}x, faster in {self.faster_rounds}/{self.rounds} rounds)")


class MeasuredSteps:
    """The side-by-side timings of one search (a no-op for targets this machine does not run)."""

    def __init__(self, target: Target, rounds: int = ROUNDS, runs: int = RUNS_PER_ROUND):
        self.target = target
        self.active = target.kind == "ort"
        self.rounds, self.runs = rounds, runs
        self.comparisons: dict[str, Comparison] = {}  # child content hash -> against its parent
        self._sessions: OrderedDict[str, tuple] = OrderedDict()

    def min_gain(self, predicted: float) -> float:
        """The least relative gain a candidate must be predicted to have to be tried: any gain on a target
        timed here, where the measurement decides (on the PaddleOCR detector a scale_depth step that the
        isolated-kernel cost model predicted 1.0% faster, and the profiled one under 0.5%, measured
        1.015-1.044x), else `predicted`."""
        return 0.0 if self.active else predicted

    def verdict(self, ctx, node) -> str | None:
        """Why `node` (a feasible model one step from its parent in `ctx`) is not accepted; None when it is
        measurably faster, or when this target is not measured here."""
        if not self.active or not node.steps:
            return None
        parent = next((n for n in ctx.evaluated if n.steps == node.steps[:-1]), None)
        if parent is None:  # reached only through a cached path: judged when it was first reached
            return None
        comparison = self.compare(parent.model, node.model)
        self.comparisons[node.key] = comparison
        return None if comparison.accepted else f"not measurably faster: {comparison.describe()}"

    def compare(self, parent: Model, child: Model) -> Comparison:
        """Time `parent` and `child` in alternating rounds (see the module docstring)."""
        pair = [self._session(parent), self._session(child)]
        samples: list[list[float]] = [[], []]
        for round_index in range(self.rounds):
            order = (0, 1) if round_index % 2 == 0 else (1, 0)
            for index in order:
                session, feeds = pair[index]
                samples[index].append(time_session(session, feeds, warmup=1, runs=self.runs,
                                                   clock=run_clock(self.target)).median_s)
        parent_rounds, child_rounds = (np.array(s) for s in samples)
        return Comparison(float(np.median(parent_rounds)), float(np.median(child_rounds)),
                          int(np.sum(child_rounds < parent_rounds)), self.rounds)

    def _session(self, model: Model) -> tuple:
        key = model.content_hash
        if key in self._sessions:
            self._sessions.move_to_end(key)
        else:
            session = session_for(model, self.target)
            feeds = seeded_inputs(model)
            time_session(session, feeds, warmup=2, runs=1)  # first runs allocate: not part of any round
            self._sessions[key] = (session, feeds)
            while len(self._sessions) > SESSIONS_KEPT:
                self._sessions.popitem(last=False)
        return self._sessions[key]

    def side_by_side(self, original: Model, optimized: Model) -> dict:
        """The report's measured figures for two models timed anew (`--measure` when the search timed nothing)."""
        comparison = self.compare(original, optimized)
        return {"target": self.target.name, "original_ms": comparison.parent_s * 1e3,
                "optimized_ms": comparison.child_s * 1e3, "rounds": self.rounds}

    def along(self, path: list[Model]) -> dict | None:
        """The measured figures of a chosen path (the original, then the model after each step) from the
        search's own comparisons; None when a step of it was not compared (e.g. nothing measured here)."""
        comparisons = [self.comparisons.get(model.content_hash) for model in path[1:]]
        if not self.active or not comparisons or any(c is None for c in comparisons):
            return None
        speedup = float(np.prod([c.speedup for c in comparisons]))
        return {"target": self.target.name, "original_ms": comparisons[0].parent_s * 1e3,
                "optimized_ms": comparisons[-1].child_s * 1e3, "speedup": speedup,
                "source": "the search: every step timed side by side with its parent before it was accepted",
                "rounds": self.rounds}
