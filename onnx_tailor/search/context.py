"""What every search strategy shares: candidates, their evaluation, caches, budget and log.

Cheap things first. A candidate (pass, site, params) is first *previewed*:
the pass's cheap rewrite (no weight fitting) scored by the learned cost model,
by its change only: the parent's latency minus the kernels the rewrite removes
plus the kernels it adds (`costmodel.delta`). A preview is kept per (model,
site); on a child model, a site whose footprint (the kernels it changes and
their neighbours) the last step did not touch keeps its predicted change
without being previewed again. Every model a search reaches is still scored
whole.
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

What greedy computes ahead (`ahead`): greedy almost always takes its first
candidate, so the second worker computing the second candidate on the same
parent was computing for nothing (the README's digits run: 91.2 s with one
worker, 91.4 s with two). Beside the first it now computes those whose fit
taking the first leaves as it is (upstream of it, or beside it): on the child
the same fit is asked for again, fed the same tensors, and `passes.fit_memo`
(one directory shared by the workers) hands back the weights a worker made.
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .. import accuracy
from ..costmodel import cost_model_for
from ..costmodel.delta import KernelCosts, changed_nodes, kernel_costs, neighbourhood
from ..costmodel.target import Target
from ..ir import Model
from ..passes import Exactness, Site, Step, get_pass
from ..passes.base import Pass
from ..passes.fit_memo import shared_directory
from ..passes.tensor_cache import active_cache
from .constraints import Constraints
from .executor import Evaluation, Measured, Serial, Shared, default_workers, executor_for
from .measured import MeasuredSteps
from .preview import Preview

_log = logging.getLogger(__name__)  # every candidate's fate, at DEBUG: what `optimize -v` shows

# A lossy rewrite whose block output changes by more than this is not worth an evaluation. It stays a
# fixed guess: it only saves evaluations (every candidate under it is judged on the metric anyway), and
# bench/search_scaling.py reports, per model, the largest local error of a feasible child and how many
# candidates the cap turned away, which is the evidence a different rule would need.
MAX_LOCAL_ERROR = 0.5
# A candidate must be predicted at least this much faster (relative) to be applied.
MIN_GAIN = 5e-3
# What became of a candidate, as a code set where its outcome is noted (the log's `fate`; report.json's
# block `reasons`, the count of why nothing helped); the note beside it says the same in words, for people.
FEASIBLE = "feasible"
PREDICTED_SLOWER = "predicted_slower"
LOCAL_ERROR_TOO_LARGE = "local_error_too_large"
OVER_ACCURACY_BUDGET = "over_accuracy_budget"
OVER_MEMORY_BUDGET = "over_memory_budget"
NOT_MEASURABLY_FASTER = "not_measurably_faster"
OTHER = "other"  # none noted now; report.json's schema still lists it
# Drops closer than this (in any metric's units: points, cosine, dB) are the same drop: exact steps move a
# drop by float noise (1e-11 of cosine on the tiny model), far below anything a budget could tell apart.
SAME_DROP = 1e-6
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
    # precision -> whether the original's outputs grow with the batch (`Evaluator.batches`; a search's data
    # judges variants of one original): asked once, not at every judgement (an extra two-sample run each),
    # since rewrites keep it.
    _batches: dict = field(default_factory=dict, repr=False)
    judge_s: float = 0.0  # seconds the original's judgement took: the time budget's first estimate of one

    def quantized(self, model: Model) -> Model:
        """`model`'s QDQ int8 quantization, calibrated on the calibration split (once per model)."""
        if model.content_hash not in self._quantized:
            self._quantized[model.content_hash] = accuracy.quantize_qdq(model, self.calibration)
        return self._quantized[model.content_hash]

    def score(self, model: Model, dataset, original: Model, precision: str | None = None):
        """`model`'s metric on `dataset` in this search's precision (or the one given), against `original`."""
        precision = precision or self.precision
        run = model if precision == "fp32" else self.quantized(model)
        if precision not in self._batches:
            self._batches[precision] = self.evaluator.batches(run, dataset)
        return self.evaluator.score(run, dataset, self.metric, reference=original, batches=self._batches[precision])

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
    fate: str = FEASIBLE  # the same as a code (OVER_ACCURACY_BUDGET, ...)
    over_accuracy: bool = False  # infeasible because it broke the accuracy budget
    change: str = ""  # what its last step did, for people (the site's summary: "expansion 176 -> 128 channels")

    @property
    def key(self) -> str:
        return self.model.content_hash


@dataclass(frozen=True)
class Candidate:
    site: Site  # found on the parent node's model
    predicted_s: float | None  # None only in `fates`, for a candidate the budget left unpreviewed

    @property
    def step(self) -> Step:
        return self.site.step


@dataclass
class Stats:
    previewed: int = 0  # candidates previewed (a rewrite built and its change scored)
    whole: int = 0  # of those, previewed on the whole model because a region around the site could not tell
    reused: int = 0  # candidates whose predicted change carried over from the parent model
    preview_s: float = 0.0  # seconds spent finding and previewing candidates
    applied: int = 0
    evaluated: int = 0
    started: float = field(default_factory=time.perf_counter)

    def to_dict(self) -> dict:
        return {"candidates_scored": self.previewed, "candidates_scored_whole": self.whole,
                "candidates_reused": self.reused,
                "preview_seconds": round(self.preview_s, 2), "candidates_applied": self.applied,
                "candidates_evaluated": self.evaluated, "seconds": round(time.perf_counter() - self.started, 2)}


class SearchContext:
    def __init__(self, original: Model, target: Target, passes: list[str], constraints: Constraints,
                 data: SearchData | None, time_budget_s: float | None = None,
                 progress: Callable[[str], None] | None = None, pass_params: dict[str, dict] | None = None,
                 started: float | None = None, workers: int | None = 1, ray: str | None = None,
                 cache_bytes: int | None = None):
        """`started`: when the time budget began (optimize's own start); `workers`, `ray`: where candidates
        are applied and evaluated (`executor.executor_for`); `cache_bytes`: each worker's tensor cache (this
        process uses the active one). Call `close` when done."""
        self.target = target
        self.pass_params = pass_params or {}
        self.cost_model = cost_model_for(target)
        # With workers, one directory where each leaves the fits it made for the others (`passes.fit_memo`).
        parallel = bool(ray) or (default_workers() if workers is None else workers) > 1
        self._memo_dir = shared_directory() if parallel else None
        shared = Shared(original, target, constraints, data, MAX_LOCAL_ERROR, cache_bytes, self.cost_model,
                        self._memo_dir)
        self._evaluation = Evaluation(shared, active_cache())  # this process's own measurements
        self._outcomes: dict[tuple[str, Step], Future] = {}  # started ahead by prefetch, not yet registered
        self.measured = MeasuredSteps(target)  # times each step against its parent on targets measured here
        self.passes = [get_pass(name) for name in passes]
        self.constraints = constraints
        self.data = data
        # The budget runs from `started` (optimize's own start) and covers what follows the search.
        self.deadline = (started or time.perf_counter()) + time_budget_s if time_budget_s else None
        self._progress = progress or (lambda message: None)
        self.stats = Stats()
        self.log: list[dict] = []  # every candidate's fate, for the report's per-block decisions
        self._nodes: dict[str, Node] = {}
        self._previews: dict[tuple[str, Step], Preview] = {}
        self._found: dict[str, list[Candidate]] = {}  # content hash -> its candidates (`candidates_of`)
        self._costs: dict[str, KernelCosts] = {}  # content hash -> the whole model's kernel costs
        self._parents: dict[str, Node] = {}  # content hash -> the node it was first reached from
        self._changed: dict[str, frozenset[str]] = {}  # content hash -> the region its last step changed
        # What the work after the search costs, measured as the search goes (see reserve_s).
        self._apply_s: dict[str, float] = {}  # content hash -> seconds its last step's apply took
        self._judge_s: list[float] = [data.judge_s] if data is not None and data.judge_s else []  # per judgement
        self._expand_s: list[float] = []  # seconds of each expansion: apply, score, judge
        self._score_s = 0.0  # seconds to score the original whole
        self._children: dict[tuple[str, Step], Node | None] = {}
        self._not_retried: set[tuple[str, Step]] = set()  # over the accuracy budget already (`failed_before`)
        self.original = original
        self.best: Node | None = None  # the fastest feasible node so far (set by node())
        self.evaluated: list[Node] = []
        try:
            self.executor = executor_for(shared, workers, ray, self._evaluation)
        except BaseException:  # no Ray at that address, no workers below 1: nothing left behind
            if self._memo_dir is not None:
                shutil.rmtree(self._memo_dir, ignore_errors=True)
            raise
        try:
            self.root = self.node(original, (), score_local=None)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the executor's workers, if any. What is previewed after is previewed in this process."""
        self.executor.close()
        self.executor = Serial(self._evaluation)
        if self._memo_dir is not None:
            shutil.rmtree(self._memo_dir, ignore_errors=True)
            self._memo_dir = None

    def settle(self) -> None:
        """The search is over: drop what was computed ahead for it and not taken, so that the workers
        are free for the work after it (why it stopped, the ceiling walk)."""
        for pending in self._outcomes.values():
            pending.cancel()
        self._outcomes.clear()

    # -- budget -----------------------------------------------------------------------

    def out_of_time(self) -> bool:
        """Whether one more expansion (as long as the average one so far) would leave too little of the
        budget for the work after the search (`reserve_s`)."""
        if self.deadline is None:
            return False
        expansion = sum(self._expand_s) / len(self._expand_s) if self._expand_s else 0.0
        return time.perf_counter() + expansion + self.reserve_s() > self.deadline

    def reserve_s(self) -> float:
        """Seconds the work after the search takes, from what the search measured: replaying the best
        model's recipe when the search's own path to it is not at hand (`path`; each step fitted again, as
        long as it took here), judging the result on the test split (with the original) and once more on
        the selection split, and scoring it for the report."""
        replay, node = 0.0, self.best if self.best is not None and self.path(self.best) is None else None
        while node is not None and node.key in self._parents:
            replay += self._apply_s.get(node.key, 0.0)
            node = self._parents[node.key]
        judge = sum(self._judge_s) / len(self._judge_s) if self._judge_s else 0.0
        return replay + 3 * judge + 2 * self._score_s

    def finish_due(self) -> bool:
        """Whether only the reserve for the work after the search is left (for post-search extras)."""
        return self.deadline is not None and time.perf_counter() + self.reserve_s() > self.deadline

    def progress(self, message: str) -> None:
        """Tell the caller's progress callback, with the time budget left when there is one."""
        if self.deadline is not None:
            message += f" ({max(0.0, self.deadline - time.perf_counter()):.0f} s of the time budget left)"
        self._progress(message)

    # -- nodes ------------------------------------------------------------------------

    def node(self, model: Model, steps: tuple[Step, ...], score_local: float | None,
             measured: Measured | None = None) -> Node:
        """Measure a model (cached by content): latency, memory, accuracy, feasibility; `measured` when
        a worker already did."""
        cached = self._nodes.get(model.content_hash)
        if cached is not None:
            return cached
        if measured is None:  # measured here, not by a worker: the time budget's estimate of a judgement
            started = time.perf_counter()
            measured = self._evaluation.measure(model, judged=bool(steps))
            if self.data is not None and steps:
                self._judge_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        # Whole, always: by the worker that applied it when one did.
        costs = self._costs[model.content_hash] = measured.costs or kernel_costs(self.cost_model, model)
        self._score_s = self._score_s or time.perf_counter() - started
        node = Node(model, steps, costs.latency_s, measured.param_bytes, measured.activation_bytes,
                    local_error=score_local)
        node.reason, node.fate = measured.memory_violation, OVER_MEMORY_BUDGET
        if self.data is not None and steps:
            judgement = measured.judgement
            node.score, node.drop = judgement.score, judgement.drop
            node.over_accuracy = node.reason is None and judgement.over_budget is not None
            if node.over_accuracy:
                node.reason, node.fate = judgement.over_budget, OVER_ACCURACY_BUDGET
            self.stats.evaluated += 1
        elif self.data is not None:
            node.score = self.data.original_score
        if node.reason is None:
            node.reason, node.fate = self.measured.verdict(self, node), NOT_MEASURABLY_FASTER
        node.feasible = node.reason is None
        if node.feasible:
            node.fate = FEASIBLE
        self._nodes[model.content_hash] = node
        self.evaluated.append(node)
        if node.feasible and (self.best is None or node.latency_s < self.best.latency_s):
            self.best = node
            self.progress(f"best so far: {node.latency_s * 1e3:.4f} ms predicted"
                          + (f", {self.data.metric} {node.score.value:.2f}" if node.score is not None else "")
                          + f" after {len(steps)} step(s)")
        return node

    def path(self, node: Node) -> list[Model] | None:
        """The models from the original to `node`, one per step of `node.steps`, as the search built them
        (each its parent's step applied on the calibration split, fitted against the original: what
        replaying the steps computes again); None when the nodes it was reached through do not spell
        out exactly those steps."""
        chain = [node]
        while chain[-1].key in self._parents and len(chain) <= len(node.steps):
            chain.append(self._parents[chain[-1].key])
        chain.reverse()
        if chain[0] is not self.root or len(chain) != len(node.steps) + 1:
            return None
        if any(n.steps != node.steps[:i] for i, n in enumerate(chain)):
            return None
        return [n.model for n in chain]

    # -- candidates -------------------------------------------------------------------

    def params_for(self, rewrite) -> dict:
        """Pass parameters: the target's parallelism factor wherever a pass takes one, overlaid with
        what the caller fixed for this pass."""
        params = {"multiple": self.target.parallelism} if any(p.name == "multiple" for p in rewrite.params) else {}
        return {**params, **self.pass_params.get(rewrite.name, {})}

    def candidates(self, node: Node) -> list[Candidate]:
        """Every applicable step on `node`, previewed, fastest predicted first (ties by name)."""
        return self.candidates_of([node])[0]

    def candidates_of(self, nodes: list[Node]) -> list[list[Candidate]]:
        """`candidates` of each of `nodes` (kept per model), their new previews built together: on workers
        in one batch, so that none waits while the next node's sites are found (a beam's frontier)."""
        started, todo = time.perf_counter(), {n.key: n for n in nodes if n.key not in self._found}
        while todo:
            # A node's previews may carry over from its parent's (`_inherited`): a parent in the batch first.
            ready = [n for n in todo.values() if getattr(self._parents.get(n.key), "key", None) not in todo]
            ready = ready or list(todo.values())
            found = [self._sites(node) for node in ready]
            wanted = [(node, self._unpreviewed(node, sites)) for node, sites in zip(ready, found)]
            for (node, sites), previews in zip(wanted, self._preview(wanted)):
                self._previews.update(((node.key, site.step), preview) for site, preview in zip(sites, previews))
            for node, sites in zip(ready, found):
                candidates = [Candidate(site, node.latency_s + self._previews[(node.key, site.step)].delta_s)
                              for site in sites]
                candidates.sort(key=lambda c: (c.predicted_s, str(c.step)))
                self._found[node.key] = candidates
                del todo[node.key]
        self.stats.preview_s += time.perf_counter() - started
        return [list(self._found[n.key]) for n in nodes]

    def _all_sites(self, node: Node) -> Iterator[Site]:
        """Every site of every pass the search runs on `node` (lossy ones only with data)."""
        for rewrite in self.passes:
            if rewrite.exactness is Exactness.LOSSY and self.data is None:
                continue
            yield from rewrite.find(node.model, **self.params_for(rewrite))

    def _sites(self, node: Node) -> list[Site]:
        """`node`'s sites (`_all_sites`); a step whose preview carries over from the parent (`_inherited`)
        takes it."""
        sites = list(self._all_sites(node))
        for site in sites:
            if (node.key, site.step) not in self._previews:
                inherited = self._inherited(node, site)
                if inherited is not None:
                    self._previews[(node.key, site.step)] = inherited
        return sites

    def _unpreviewed(self, node: Node, sites: list[Site]) -> list[Site]:
        """Those of `node`'s sites with no preview yet, each step once (its first site)."""
        fresh: dict[Step, Site] = {}
        for site in sites:
            if (node.key, site.step) not in self._previews:
                fresh.setdefault(site.step, site)
        return list(fresh.values())

    def _preview(self, wanted: list[tuple[Node, list[Site]]]) -> list[list[Preview]]:
        """Previews of these sites of each node: here with one worker, else shared out among the workers
        in one batch (each node's sites dealt round-robin into a few jobs per worker, so that slow rewrites
        spread evenly)."""
        self.stats.previewed += sum(len(sites) for _, sites in wanted)
        params = {rewrite.name: self.params_for(rewrite) for rewrite in self.passes}
        width = self.executor.width
        if width == 1 or sum(len(sites) for _, sites in wanted) < 2:
            answers = [self._evaluation.preview((node.model, self._costs[node.key], sites, params))
                       for node, sites in wanted]
            self.stats.whole += sum(whole for _, whole in answers)
            return [previews for previews, _ in answers]
        jobs, deals = [], []
        for node, sites in wanted:
            count = min(len(sites), 2 * width)
            deals.append((len(jobs), count, len(sites)))
            jobs += [(node.model, self._costs[node.key], sites[i::count], params) for i in range(count)]
        dealt = self.executor.map(jobs, "preview")
        batch = []
        for first, count, size in deals:
            previews: list[Preview] = [None] * size  # type: ignore[list-item]
            for i, (chunk, whole) in enumerate(dealt[first:first + count]):
                previews[i::count] = chunk
                self.stats.whole += whole
            batch.append(previews)
        return batch

    def _inherited(self, node: Node, site: Site) -> Preview | None:
        """The parent's preview of the same step, when the step that made `node` left its footprint alone."""
        parent = self._parents.get(node.key)
        earlier = self._previews.get((parent.key, site.step)) if parent is not None else None
        if earlier is None or earlier.site_nodes != site.nodes or earlier.footprint & self._region(parent, node):
            return None
        self.stats.reused += 1
        return earlier

    def _region(self, parent: Node, node: Node) -> frozenset[str]:
        """What the step from `parent` to `node` changed: nodes in kernels that differ, nodes whose
        definition differs, and their neighbours on both sides."""
        if node.key not in self._changed:
            before = {n.name: n.SerializeToString(deterministic=True) for n in parent.model.nodes}
            after = {n.name: n.SerializeToString(deterministic=True) for n in node.model.nodes}
            edited = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
            changed = changed_nodes(self._costs[parent.key], self._costs[node.key]) | edited
            self._changed[node.key] = neighbourhood(parent.model, changed) | neighbourhood(node.model, changed)
        return self._changed[node.key]

    def worth_applying(self, node: Node, candidate: Candidate) -> bool:
        if not self.planned_worth(node, candidate):
            gain = node.latency_s - candidate.predicted_s
            self._note(node, candidate, PREDICTED_SLOWER, f"predicted slower or no faster ({-gain * 1e6:+.1f} us)")
            return False
        return True

    def planned_worth(self, node: Node, candidate: Candidate) -> bool:
        """`worth_applying` without noting anything: for planning what to compute ahead."""
        return node.latency_s - candidate.predicted_s > self.measured.min_gain(MIN_GAIN) * node.latency_s

    def planned(self, node: Node, limit: int | None, found: list[Candidate] | None = None) -> list[Candidate]:
        """The candidates `children(node, limit)` applies, time allowing (candidates come fastest predicted
        first, so those worth applying lead the list); `found`: `node`'s candidates, when already at hand."""
        return [c for c in (self.candidates(node) if found is None else found)
                if self.planned_worth(node, c) and not self.failed_before(node, c)][:limit]

    def children(self, node: Node, limit: int | None) -> Iterator[Node]:
        """Children of `node` from its `limit` most promising candidates worth applying, fastest
        predicted first, while time lasts; a candidate not worth evaluating yields nothing. With several
        workers the next ones are computed together, as many as there are workers."""
        tried, found = 0, self.candidates(node)
        planned = self.planned(node, limit, found) if self.executor.width > 1 else []  # nothing to compute ahead
        for candidate in found:
            if (limit is not None and tried >= limit) or self.out_of_time():
                return
            if not self.worth_applying(node, candidate):
                continue
            if self.failed_before(node, candidate):  # not counted: the limit is for what can still pass
                self._not_retried.add((node.key, candidate.step))
                self._note(node, candidate, OVER_ACCURACY_BUDGET, "over the accuracy budget from an earlier model "
                                                                  "that had lost no more accuracy (not tried again)")
                continue
            if (node.key, candidate.step) not in self._outcomes:
                self.prefetch([(node, c) for c in self.ahead(node, planned[tried:])])
            tried += 1
            child = self.expand(node, candidate)
            if child is not None:
                yield child

    def ahead(self, node: Node, planned: list[Candidate]) -> list[Candidate]:
        """What to compute at once on the workers from `planned` (next first): the next, and beside it those
        after it whose fit taking the next would not change, before the rest. Greedy mostly takes the next;
        a candidate upstream of it (or beside it) is then asked for again on the child, fed the same
        tensors, and its fit, left by a worker in the memo (`passes.fit_memo`), is not computed again;
        a candidate downstream of it is computed for nothing."""
        if not planned:
            return []
        if self.executor.width == 1 or len(planned) < 2:
            return planned[:1]
        model, first = node.model, planned[0]
        # Everything computed from what the next changes: its site's nodes, and from them on (a refitted
        # consumer, a projection, is downstream of them).
        downstream, frontier = set(), [n for n in first.site.nodes if model.has_node(n)]
        while frontier:
            name = frontier.pop()
            if name not in downstream:
                downstream.add(name)
                frontier.extend(c.name for o in model.node(name).output for c in model.consumers(o))
        untouched, touched = [], []
        for candidate in planned[1:]:  # what its fit reads is upstream of its site and footprint
            region = candidate.site.nodes | self._previews[(node.key, candidate.step)].footprint
            (touched if region & downstream else untouched).append(candidate)
        return [first, *untouched, *touched][:self.executor.width]

    def failed_before(self, node: Node, candidate: Candidate) -> bool:
        """Whether this very step, on an unchanged site, broke the accuracy budget from an ancestor of
        `node` that had lost no more accuracy than `node` has. Drops add up along a path closely enough
        that trying it again would spend an evaluation to learn the same; without this, greedy's few
        evaluations per step go to the same failing steps at every step (the PaddleOCR detector: its
        ten IBN fusions, each over a 0.01 cosine budget, retried after every step taken) and it stops
        with untried candidates that fit."""
        preview = self._previews.get((node.key, candidate.step))
        ancestor = self._parents.get(node.key)
        while ancestor is not None and preview is not None:
            if self._previews.get((ancestor.key, candidate.step)) is not preview:
                return False  # the step's surroundings changed since: a different candidate
            tried = self._children.get((ancestor.key, candidate.step))
            if tried is not None and tried.over_accuracy and ancestor.drop <= node.drop + SAME_DROP:
                return True
            ancestor = self._parents.get(ancestor.key)
        return False

    def prefetch(self, pairs: list[tuple[Node, Candidate]]) -> None:
        """Start applying and measuring these candidates on the executor's workers and return at once;
        `expand` registers each when its turn comes, waiting for it only then, so that registering the
        first (scoring each model whole) overlaps the workers' computing the rest. Nothing happens with
        one worker, where `expand` computes each when it comes."""
        if self.executor.width == 1:
            return
        jobs = {}
        for node, candidate in pairs:
            key = (node.key, candidate.step)
            if key not in self._children and key not in self._outcomes:
                jobs.setdefault(key, (node.model, candidate.site))
        if jobs:
            self._outcomes.update(zip(jobs, self.executor.submit(list(jobs.values()))))

    def expand(self, node: Node, candidate: Candidate) -> Node | None:
        """Apply a candidate for real and measure the result; None when it is not worth evaluating."""
        key = (node.key, candidate.step)
        if key in self._children:
            return self._children[key]
        started = time.perf_counter()
        pending = self._outcomes.pop(key, None)
        outcome = pending.result() if pending is not None else self.executor.map([(node.model, candidate.site)])[0]
        applied_s = time.perf_counter() - started
        self.stats.applied += 1
        error = outcome.local_error
        if outcome.model is None:
            self._note(node, candidate, LOCAL_ERROR_TOO_LARGE, f"local error {error:.2f} too large to evaluate")
            self._children[key] = None
            self._expand_s.append(time.perf_counter() - started)
            return None
        child = self.node(outcome.model, node.steps + (candidate.step,), error, outcome.measured)
        child.change = child.change or candidate.site.summary
        self._parents.setdefault(child.key, node)
        self._apply_s.setdefault(child.key, applied_s)
        self._expand_s.append(time.perf_counter() - started)
        self._note(node, candidate, child.fate, "feasible" if child.feasible else child.reason, child)
        self._children[key] = child
        return child

    def _note(self, node: Node, candidate: Candidate, fate: str, outcome: str, child: Node | None = None) -> None:
        """Log what became of `candidate`: `fate` as a code, `outcome` in words."""
        _log.debug("candidate %s after %d step(s): %s", candidate.step, len(node.steps), outcome)
        self.log.append({"step": candidate.step.to_dict(), "nodes": sorted(candidate.site.nodes),
                         "after_steps": len(node.steps), "predicted_gain_us": (node.latency_s - candidate.predicted_s) * 1e6,
                         "fate": fate, "outcome": outcome, "local_error": child.local_error if child else None})

    # -- why the search stopped ---------------------------------------------------------

    def fates(self, node: Node, timed_out: bool) -> dict[str, dict[str, int]]:
        """Why each candidate remaining on `node` was not taken, counted per pass."""
        counts: dict[str, dict[str, int]] = {}
        for candidate in self._priced(node, timed_out):
            key = (node.key, candidate.step)
            if candidate.predicted_s is None:
                fate = "never previewed: the time budget ran out"
            elif key in self._not_retried:
                fate = "over the accuracy budget"
            elif key not in self._children:
                if not self.planned_worth(node, candidate):  # the search's own test, not a copy of it
                    fate = "predicted no faster"
                elif timed_out:
                    fate = "never tried: the time budget ran out"
                else:
                    fate = "never tried: not among the most promising the search evaluates from this model"
            elif self._children[key] is None:
                fate = f"local error over the cap of {MAX_LOCAL_ERROR:g}"
            elif not self._children[key].feasible:
                child = self._children[key]
                over_memory = self.constraints.memory_violation(child.param_bytes, child.activation_bytes)
                fate = "over the memory budget" if over_memory else "over the accuracy budget"
            else:
                fate = "feasible, but another sequence was faster"
            per_pass = counts.setdefault(candidate.step.pass_name, {})
            per_pass[fate] = per_pass.get(fate, 0) + 1
        return counts

    def _priced(self, node: Node, timed_out: bool) -> list[Candidate]:
        """`node`'s candidates; once the budget has run out, only those already previewed carry a
        prediction (the others get None) so that telling why costs no preview."""
        if not timed_out:
            return self.candidates(node)
        found = []
        for site in self._all_sites(node):
            preview = self._previews.get((node.key, site.step))
            found.append(Candidate(site, None if preview is None else node.latency_s + preview.delta_s))
        return found

    def ceiling(self, start: Node, max_steps: int = 500) -> tuple[Node, bool]:
        """The structural ceiling from `start`: every candidate predicted faster applied in turn (the
        fastest first) whatever it does to accuracy, by previews alone (no fitting, no evaluation).
        Returns the last model reached and whether the walk finished before the budget's reserve."""
        current = start
        for _ in range(max_steps):
            if self.finish_due():
                return current, False
            threshold = (1 - MIN_GAIN) * current.latency_s
            best = next((c for c in self.candidates(current) if c.predicted_s < threshold), None)
            if best is None:
                return current, True
            rewrite: Pass = get_pass(best.step.pass_name)
            model = rewrite.preview(current.model, best.site)
            costs = self._costs.setdefault(model.content_hash, kernel_costs(self.cost_model, model))
            child = Node(model, current.steps + (best.step,), costs.latency_s, 0, 0)
            self._parents.setdefault(child.key, current)
            current = child
        return current, False
