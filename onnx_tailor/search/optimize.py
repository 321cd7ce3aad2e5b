"""`optimize`: the fastest model the search finds that still meets every constraint.

One run: load the target and the data (split into a calibration part that
passes fit weights on and an evaluation part that only judges), score the
original, run the chosen search strategy within the time budget (Ctrl-C ends
it early with the best so far), then rebuild the chosen model by replaying
its recipe on the original, evaluate it again, check it with the onnx
checker and onnxruntime, and report. With no data, only exact passes run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx

from .. import accuracy
from ..costmodel import load_target
from ..costmodel.measure import session_for, time_session
from ..costmodel.target import Target
from ..errors import TailorError
from ..ir import Model, seeded_inputs, session
from ..passes import all_passes
from .beam import beam
from .constraints import Constraints, parse_max_drop
from .context import SearchContext, SearchData
from .evolutionary import evolutionary
from .greedy import greedy
from .recipe import Recipe, replay
from .report import build_report

STRATEGIES = ("greedy", "beam", "evolutionary")
CLEANUP_PASSES = ("simplify", "fold_batchnorm")  # canonicalization already ran these


class NoFeasibleModel(TailorError):
    """Not even the original model meets the constraints, and no rewrite fixed that."""

    exit_code = 4


@dataclass
class OptimizeResult:
    model: Model
    report: dict
    recipe: Recipe
    notes: list[str] = field(default_factory=list)
    context: SearchContext | None = None  # the run's candidates and evaluations, e.g. for a Pareto plot

    @property
    def improved(self) -> bool:
        return bool(self.recipe.steps)


def _passes(requested: list[str] | None) -> list[str]:
    known = all_passes()
    names = requested or [n for n in known if n not in CLEANUP_PASSES]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TailorError(f"unknown pass '{unknown[0]}'; known passes: {', '.join(known)}")
    return names


def split_data(model: Model, data, seed: int, calibration: float):
    """The deterministic calibration/evaluation split of `data` (a path, 'random' or a Dataset)."""
    dataset = data if isinstance(data, accuracy.Dataset) else accuracy.load_data(data, model)
    if len(dataset) < 4:
        raise TailorError(f"--data has {len(dataset)} samples; a calibration and an evaluation part need at least 4")
    return accuracy.split_dataset(dataset, calibration=calibration, seed=seed)


def _search_data(model: Model, data, metric: str | None, max_drop: str, seed: int, calibration: float,
                 notes: list[str]) -> SearchData:
    split = split_data(model, data, seed, calibration)
    metric = metric or accuracy.default_metric(split.evaluation, True)
    evaluator = accuracy.Evaluator()
    original_score = evaluator.score(model, split.evaluation, metric, reference=model)
    budget = parse_max_drop(max_drop)
    allowed = budget.allowed_drop(original_score.value)
    warning = accuracy.interval_warning(original_score, allowed) if original_score.half_width else None
    if warning:
        notes.append(warning)
    shown = f"{budget.amount:g}% of it" if budget.relative else f"{budget.amount:g} in {metric}'s units"
    notes.append(f"accuracy budget: {metric} may drop {allowed:.3g} ({shown}) against the original "
                 f"{original_score.value:.3g} on {len(split.evaluation)} evaluation samples; "
                 f"passes fit on {len(split.calibration)} calibration samples")
    return SearchData(split.calibration.inputs, split.evaluation, metric, evaluator, original_score, allowed,
                      split.calibration.fingerprint)


def _measure_side_by_side(original: Model, optimized: Model, target: Target, rounds: int = 5) -> dict:
    """Median latency of both models, timed in alternation so that machine noise hits both alike."""
    sessions = [session_for(m, target) for m in (original, optimized)]
    feeds = seeded_inputs(original)
    medians = [[], []]
    for _ in range(rounds):
        for index, sess in enumerate(sessions):
            medians[index].append(time_session(sess, feeds, warmup=3, runs=15).median_s)
    original_s, optimized_s = (sorted(m)[len(m) // 2] for m in medians)
    return {"target": target.name, "original_ms": original_s * 1e3, "optimized_ms": optimized_s * 1e3,
            "rounds": rounds}


def optimize(model: Model, target: str | Target = "npu-p32", data=None, metric: str | None = None,
             max_drop: str = "1.0", max_params: int | None = None, max_activation: int | None = None,
             passes: list[str] | None = None, search: str = "greedy", beam_width: int = 4,
             time_budget: float | None = None, seed: int = 0, calibration: float = 0.5, measure: bool = False,
             progress: Callable[[str], None] | None = None) -> OptimizeResult:
    """Search for the fastest model that meets the constraints (see the module docstring)."""
    if search not in STRATEGIES:
        raise TailorError(f"unknown search '{search}'; choose one of {', '.join(STRATEGIES)}")
    target = target if isinstance(target, Target) else load_target(target)
    notes: list[str] = []
    names = _passes(passes)
    search_data = None
    if data is not None:
        search_data = _search_data(model, data, metric, max_drop, seed, calibration, notes)
    else:
        notes.append("no --data: only exact passes ran (there is nothing to check accuracy against)")
    constraints = Constraints(parse_max_drop(max_drop) if data is not None else None, max_params, max_activation)
    ctx = SearchContext(model, target, names, constraints, search_data, time_budget, progress)
    try:
        if search == "greedy":
            greedy(ctx)
        elif search == "beam":
            beam(ctx, width=beam_width)
        else:
            evolutionary(ctx, population_size=max(beam_width, 2) * 2, seed=seed)
    except KeyboardInterrupt:
        notes.append("interrupted: the best model found so far is returned")
    if ctx.out_of_time():
        notes.append(f"the time budget of {time_budget:g} s ran out: the best model found so far is returned")
    chosen = ctx.best
    if chosen is None:
        raise NoFeasibleModel(f"no model meets the constraints: the original's {ctx.root.reason}, "
                              "and no rewrite found fixed that")
    if not chosen.steps:
        notes.append(_why_nothing_helped(ctx))

    data_info = None
    calib = search_data.calibration if search_data else None
    fingerprint = search_data.calibration_fingerprint if search_data else None
    if search_data is not None:
        data_info = {"source": str(data) if not isinstance(data, accuracy.Dataset) else "in-memory",
                     "seed": seed, "fraction": calibration}
    recipe = Recipe(model.content_hash, chosen.steps, dict(model.input_shapes), fingerprint, data_info, target.name)
    final = replay(recipe, model, calib, fingerprint)
    if final.content_hash != chosen.model.content_hash:
        notes.append("replaying the recipe gave different bytes than the search's own model; the replay is written")
    _check_loadable(final)
    final_node = ctx.node(final, chosen.steps, chosen.local_error)  # cached when identical; else measured anew
    if search_data is not None:  # the final model is judged again, on its own, before it is written
        judgement = search_data.judge(final, model)
        final_node.score, final_node.drop = judgement.score, judgement.drop
        if judgement.over_budget:
            raise RuntimeError(f"the final model breaks the budget on re-evaluation ({judgement.over_budget}); "
                               "nothing was written (a bug: please report it)")
    measured = _measure_side_by_side(model, final, target) if measure and target.kind == "ort" else None
    if measure and target.kind != "ort":
        notes.append(f"--measure times models with onnxruntime; {target.name} is {target.kind}, so nothing was timed")
    report = build_report(ctx, final_node, search, notes, measured)
    return OptimizeResult(final, report, recipe, notes, ctx)


def _why_nothing_helped(ctx: SearchContext) -> str:
    outcomes = [e["outcome"] for e in ctx.log]
    if not outcomes:
        return "nothing beat the original: no pass found a site to rewrite; the original is returned unchanged"
    slower = sum("predicted slower" in o for o in outcomes)
    budget = sum("over the budget" in o for o in outcomes)
    error = sum("too large" in o for o in outcomes)
    return (f"nothing beat the original ({len(outcomes)} candidates: {slower} predicted no faster, {budget} over "
            f"a budget, {error} with too large a local error); the original is returned unchanged")


def _check_loadable(model: Model) -> None:
    """The written model must pass the onnx checker and load in onnxruntime."""
    try:
        onnx.checker.check_model(model.proto)
        session(model)
    except Exception as exc:  # a bug, not a user error: keep the cause
        raise RuntimeError(f"the optimized model failed its final check: {exc}") from exc
