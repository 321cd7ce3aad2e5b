"""What every search strategy shares: candidates, their evaluation, caches, budget and log.

Cheap things first. A candidate (pass, site, params) is first *previewed*:
the pass's cheap rewrite (no weight fitting) scored by the learned cost model.
Only candidates predicted faster than their parent are *applied* for real
(data-aware fitting on the calibration split); a lossy one whose local error
is already too large stops there; the rest are *evaluated* (the metric on
the evaluation split, against the original). Everything is cached by model
content hash, so no model is fitted, scored or evaluated twice.

Applying and evaluating is handed to an executor (`executor`): in this
process, or in worker processes that compute several candidates at once.
Either way the results are registered here in the order a one-process search
takes them (`prefetch` computes ahead, `expand` registers), so the log, the
best node and the output bytes do not depend on the number of workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .. import accuracy
from ..costmodel.target import Target
from ..ir import Model
from ..passes import Exactness, Site, Step, get_pass
from ..passes.tensor_cache import active_cache
from .constraints import Constraints
from .executor import Evaluation, Measured, Outcome, Shared, blas_threads, executor_for

# A lossy rewrite whose block output changes by more than this is not worth an evaluation.
MAX_LOCAL_ERROR = 0.5
# A candidate must be predicted at least this much faster (relative) to be applied.
MIN_GAIN = 5e-3


@dataclass(frozen=True)
class Judgement:
    """A model's metric on the split it was judged on, its drop against the original, and whether that is too much."""

    score: Any  # accuracy.Score
    drop: float  # in metric units; positive is worse
    over_budget: str | None  # why the drop breaks the budget, in words; None within it


@dataclass
class SearchData:
    """The data side of a search: calibration inputs for passes, the selection split that the search
    judges candidates on, and the test split that only the final model and the original see.

    With `precision` int8 every model is judged as the device runs it: quantized by onnxruntime's
    static QDQ quantization (`accuracy.quantize_qdq`), calibrated on the calibration split, and
    compared with the fp32 original (the user's ground truth) where a metric needs a reference."""

    calibration: dict
    selection: Any  # accuracy.Dataset
    test: Any  # accuracy.Dataset
    metric: str
    evaluator: Any  # accuracy.Evaluator
    original_score: Any  # accuracy.Score of the original on the selection split
    allowed_drop: float
    calibration_fingerprint: str = ""
    precision: str = "fp32"  # fp32 | int8
    # point: a candidate holds when its selection drop is within the budget; margin: when its drop
    # plus one standard error of the paired per-sample differences is (a flipped sample is charged
    # for the uncertainty it brings, so that a walk along the budget on noise is not taken for free).
    acceptance: str = "margin"
    _quantized: dict = field(default_factory=dict, repr=False)  # content hash -> quantized model

    def quantized(self, model: Model) -> Model:
        """`model`'s QDQ int8 quantization, calibrated on the calibration split (once per model)."""
        if model.content_hash not in self._quantized:
            self._quantized[model.content_hash] = accuracy.quantize_qdq(model, self.calibration)
        return self._quantized[model.content_hash]

    def score(self, model: Model, dataset, original: Model, precision: str | None = None):
        """`model`'s metric on `dataset` in this search's precision (or the one given), against `original`."""
        run = model if (precision or self.precision) == "fp32" else self.quantized(model)
        return self.evaluator.score(run, dataset, self.metric, reference=original)

    def judge(self, model: Model, original: Model, original_score=None, on_test: bool = False) -> Judgement:
        """Score `model` against `original` on the selection split (or the test split, with the
        original's score there) and check the accuracy budget."""
        dataset, original_score = (self.test, original_score) if on_test else (self.selection, self.original_score)
        score = self.score(model, dataset, original)
        drop = (original_score.value - score.value) * (1 if original_score.higher_is_better else -1)
        margin = 0.0 if on_test or self.acceptance == "point" else accuracy.drop_standard_error(original_score, score)
        over = None
        if drop + margin > self.allowed_drop + 1e-9:
            charged = f" (+{margin:.2f} for its uncertainty)" if margin else ""
            over = (f"{self.metric} drops {drop:.2f}{charged} against the original, "
                    f"over the budget of {self.allowed_drop:.2f}")
        return Judgement(score, drop, over)


@dataclass
class Node:
    """A model reached by a sequence of steps, and everything measured about it."""

    model: Model
    steps: tuple[Step, ...]
    latency_s: float  # predicted by the cost model
    param_bytes: int
    activation_bytes: int
    score: Any = None  # accuracy.Score on the evaluation split (None without data)
    drop: float = 0.0  # metric drop against the original, in metric units
    local_error: float | None = None  # of the last step, when it was lossy
    feasible: bool = True
    reason: str | None = None  # why it is infeasible

    @property
    def key(self) -> str:
        return self.model.content_hash


@dataclass(frozen=True)
class Candidate:
    site: Site  # found on the parent node's model
    predicted_s: float

    @property
    def step(self) -> Step:
        return self.site.step


@dataclass
class Stats:
    previewed: int = 0
    applied: int = 0
    evaluated: int = 0
    started: float = field(default_factory=time.perf_counter)

    def to_dict(self) -> dict:
        return {"candidates_scored": self.previewed, "candidates_applied": self.applied,
                "candidates_evaluated": self.evaluated, "seconds": round(time.perf_counter() - self.started, 2)}


class SearchContext:
    def __init__(self, original: Model, target: Target, passes: list[str], constraints: Constraints,
                 data: SearchData | None, time_budget_s: float | None = None,
                 progress: Callable[[str], None] | None = None, pass_params: dict[str, dict] | None = None,
                 workers: int | None = 1, ray: str | None = None, cache_bytes: int | None = None):
        """`workers`, `ray`: where candidates are applied and evaluated (`executor.executor_for`); `cache_bytes`:
        each worker's tensor cache (this process uses the active one). Call `close` when done."""
        self.target = target
        self.pass_params = pass_params or {}
        shared = Shared(original, target, constraints, data, MAX_LOCAL_ERROR, cache_bytes, blas_threads())
        self._evaluation = Evaluation(shared, active_cache())  # this process's own measurements
        self.cost_model = self._evaluation.cost_model
        self._outcomes: dict[tuple[str, Step], Outcome] = {}  # computed ahead by prefetch, not yet registered
        self.passes = [get_pass(name) for name in passes]
        self.constraints = constraints
        self.data = data
        self.deadline = time.perf_counter() + time_budget_s if time_budget_s else None
        self.progress = progress or (lambda message: None)
        self.stats = Stats()
        self.log: list[dict] = []  # every candidate's fate, for the report's per-block decisions
        self._nodes: dict[str, Node] = {}
        self._previews: dict[tuple[str, Step], float] = {}
        self._children: dict[tuple[str, Step], Node | None] = {}
        self.original = original
        self.best: Node | None = None  # the fastest feasible node so far (set by node())
        self.evaluated: list[Node] = []
        self.executor = executor_for(shared, workers, ray, self._evaluation)
        try:
            self.root = self.node(original, (), score_local=None)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the executor's workers, if any."""
        self.executor.close()

    # -- budget -----------------------------------------------------------------------

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    # -- nodes ------------------------------------------------------------------------

    def node(self, model: Model, steps: tuple[Step, ...], score_local: float | None,
             measured: Measured | None = None) -> Node:
        """Measure a model (cached by content): latency, memory, accuracy, feasibility; `measured` when
        a worker already did."""
        cached = self._nodes.get(model.content_hash)
        if cached is not None:
            return cached
        measured = measured or self._evaluation.measure(model, judged=bool(steps))
        node = Node(model, steps, measured.latency_s, measured.param_bytes, measured.activation_bytes,
                    local_error=score_local)
        node.reason = measured.memory_violation
        if self.data is not None and steps:
            judgement = measured.judgement
            node.score, node.drop = judgement.score, judgement.drop
            node.reason = node.reason or judgement.over_budget
            self.stats.evaluated += 1
        elif self.data is not None:
            node.score = self.data.original_score
        node.feasible = node.reason is None
        self._nodes[model.content_hash] = node
        self.evaluated.append(node)
        if node.feasible and (self.best is None or node.latency_s < self.best.latency_s):
            self.best = node
            self.progress(f"best so far: {node.latency_s * 1e3:.4f} ms predicted"
                          + (f", {self.data.metric} {node.score.value:.2f}" if node.score is not None else "")
                          + f" after {len(steps)} step(s)")
        return node

    # -- candidates -------------------------------------------------------------------

    def params_for(self, rewrite) -> dict:
        """Pass parameters: the target's parallelism factor wherever a pass takes one, overlaid with
        what the caller fixed for this pass."""
        params = {"multiple": self.target.parallelism} if any(p.name == "multiple" for p in rewrite.params) else {}
        return {**params, **self.pass_params.get(rewrite.name, {})}

    def candidates(self, node: Node) -> list[Candidate]:
        """Every applicable step on `node`, previewed, fastest predicted first (ties by name)."""
        found = []
        for rewrite in self.passes:
            if rewrite.exactness is Exactness.LOSSY and self.data is None:
                continue
            params = self.params_for(rewrite)
            for site in rewrite.find(node.model, **params):
                key = (node.key, site.step)
                if key not in self._previews:
                    preview = rewrite.preview(node.model, site)
                    self._previews[key] = self.cost_model.predict(preview).latency_s
                    self.stats.previewed += 1
                found.append(Candidate(site, self._previews[key]))
        found.sort(key=lambda c: (c.predicted_s, str(c.step)))
        return found

    def worth_applying(self, node: Node, candidate: Candidate) -> bool:
        if not self.planned_worth(node, candidate):
            gain = node.latency_s - candidate.predicted_s
            self._note(node, candidate, f"predicted slower or no faster ({-gain * 1e6:+.1f} us)")
            return False
        return True

    @staticmethod
    def planned_worth(node: Node, candidate: Candidate) -> bool:
        """`worth_applying` without noting anything: for planning what to compute ahead."""
        return node.latency_s - candidate.predicted_s > MIN_GAIN * node.latency_s

    def planned(self, node: Node, limit: int) -> list[Candidate]:
        """The candidates `children(node, limit)` applies, time allowing (candidates come fastest predicted
        first, so those worth applying lead the list)."""
        return [c for c in self.candidates(node) if self.planned_worth(node, c)][:limit]

    def children(self, node: Node, limit: int) -> Iterator[Node]:
        """Children of `node` from its `limit` most promising candidates worth applying, fastest
        predicted first, while time lasts; a candidate not worth evaluating yields nothing. With several
        workers the next ones are computed together, as many as there are workers."""
        tried = 0
        planned = self.planned(node, limit)
        for candidate in self.candidates(node):
            if tried >= limit or self.out_of_time():
                return
            if not self.worth_applying(node, candidate):
                continue
            if (node.key, candidate.step) not in self._outcomes:
                self.prefetch([(node, c) for c in planned[tried:tried + self.executor.width]])
            tried += 1
            child = self.expand(node, candidate)
            if child is not None:
                yield child

    def prefetch(self, pairs: list[tuple[Node, Candidate]]) -> None:
        """Apply and measure these candidates at once on the executor, for `expand` to register later;
        nothing happens with one worker, where `expand` computes each when it comes."""
        if self.executor.width == 1:
            return
        jobs = {}
        for node, candidate in pairs:
            key = (node.key, candidate.step)
            if key not in self._children and key not in self._outcomes:
                jobs.setdefault(key, (node.model, candidate.site))
        if jobs:
            self._outcomes.update(zip(jobs, self.executor.map(list(jobs.values()))))

    def expand(self, node: Node, candidate: Candidate) -> Node | None:
        """Apply a candidate for real and measure the result; None when it is not worth evaluating."""
        key = (node.key, candidate.step)
        if key in self._children:
            return self._children[key]
        outcome = self._outcomes.pop(key, None) or self.executor.map([(node.model, candidate.site)])[0]
        self.stats.applied += 1
        error = outcome.local_error
        if outcome.model is None:
            self._note(node, candidate, f"local error {error:.2f} too large to evaluate")
            self._children[key] = None
            return None
        child = self.node(outcome.model, node.steps + (candidate.step,), error, outcome.measured)
        self._note(node, candidate, "feasible" if child.feasible else child.reason, child)
        self._children[key] = child
        return child

    def _note(self, node: Node, candidate: Candidate, outcome: str, child: Node | None = None) -> None:
        self.log.append({"step": candidate.step.to_dict(), "nodes": sorted(candidate.site.nodes),
                         "after_steps": len(node.steps), "predicted_gain_us": (node.latency_s - candidate.predicted_s) * 1e6,
                         "outcome": outcome, "local_error": child.local_error if child else None})
