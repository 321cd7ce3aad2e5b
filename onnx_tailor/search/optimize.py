"""`optimize`: the fastest model the search finds that still meets every constraint.

One run: load the target and the data (split into calibration, which passes
fit weights on, selection, which the search judges candidates on, and test),
score the original, run the chosen search strategy within the time budget
(Ctrl-C ends it early with the best so far), then take the models along the
chosen model's path as the search built them (the recipe's steps, each fitted
on its parent: what replaying the recipe on the original computes again; it is
replayed only when the search's own path is not at hand), and judge the chosen
model once on the test split,
which the search never saw: that is the drop the report quotes. A search that
picks among many candidates by their score on the selection split
overestimates the winner there; when the chosen model breaks the budget on
the test split, the best earlier model on its path that holds there is
returned instead (or the original), and the report says so. Finally the
result is checked with the onnx checker and onnxruntime. With no data, only
exact passes run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import onnx

from .. import accuracy
from ..costmodel import load_target, simulate
from ..costmodel.anchor import measured_elsewhere
from ..costmodel.target import Target
from ..errors import QuantizationError, TailorError
from ..ir import Model, session
from ..passes import Exactness, all_passes, get_pass
from ..passes.tensor_cache import using
from .beam import beam
from .constraints import AccuracyBudget, Constraints, check_binds, default_max_drop, drop_units, parse_max_drop
from .context import (LOCAL_ERROR_TOO_LARGE, NOT_MEASURABLY_FASTER, OVER_ACCURACY_BUDGET, OVER_MEMORY_BUDGET,
                      PREDICTED_SLOWER, Judgement, SearchContext, SearchData)
from .evolutionary import evolutionary
from .executor import new_cache
from .greedy import greedy
from .provenance import stamped
from .recipe import IN_MEMORY, Recipe, replay_each
from .report import build_report

STRATEGIES = ("greedy", "beam", "evolutionary")
PRECISIONS = ("fp32", "int8")
# See SearchData.acceptance. margin is the default: on the PaddleOCR classifier over 3 split seeds
# (bench/accuracy_trust.py, before fuse refinement) its results lost 0.70-1.10 points on fresh data,
# point's 0.80-1.70, for about 9% less speed-up. With refinement and int8 judging both reach 2.86x;
# margin lost 0.50, 0.50, 0.10 int8 points on fresh lines (seeds 0-2), point 0.50 and 0.80 (seeds 0-1).
ACCEPTANCES = ("margin", "point")
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

    def to_dict(self) -> dict:
        """JSON-ready: whether it improved, the notes, the report (what report.json holds; latencies in
        ms) and the recipe (what recipe.json holds, the data path as given)."""
        return {"improved": self.improved, "model_hash": self.model.content_hash, "notes": list(self.notes),
                "report": self.report, "recipe": self.recipe.to_dict()}

    def emitted(self, emit: str = "fp32") -> Model:
        """The model to write: fp32 as optimized, or `qdq`, its int8 QDQ quantization calibrated on the
        calibration split (the form NPU compilers take; the same bytes the search judged in int8)."""
        if emit == "fp32":
            return self.model
        if emit != "qdq":
            raise TailorError(f"unknown --emit '{emit}'; choose fp32 or qdq")
        if self.context is None or self.context.data is None:
            raise TailorError("--emit qdq calibrates the quantization on --data; give --data")
        return stamped(self.context.data.quantized(self.model), self.model, self.recipe)


def _passes(requested: list[str] | None) -> list[str]:
    known = all_passes()
    names = requested or [n for n in known if n not in CLEANUP_PASSES]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise TailorError(f"unknown pass '{unknown[0]}'; known passes: {', '.join(known)}")
    return names


def _pass_params(given: dict[str, dict], names: list[str]) -> dict[str, dict]:
    """`given` checked against the passes: each must be one the search runs, each key one it declares."""
    for name, params in given.items():
        if name not in names:
            raise TailorError(f"parameters given for pass '{name}', which this search does not run "
                              f"(it runs {', '.join(names)})")
        get_pass(name).resolve_params(params)  # unknown keys and bad values fail here, before the search
    return given


def split_data(model: Model, data, seed: int, calibration: float):
    """The deterministic calibration/evaluation split of `data` (a path, 'random' or a Dataset)."""
    dataset = data if isinstance(data, accuracy.Dataset) else accuracy.load_data(data, model)
    if len(dataset) < 4:
        raise TailorError(f"--data has {len(dataset)} samples; a calibration and an evaluation part need at least 4")
    return accuracy.split_dataset(dataset, calibration=calibration, seed=seed)


def _load_split(model: Model, data, seed: int, fractions) -> accuracy.SearchSplit:
    """`data` (a path, 'random' or a Dataset) loaded and split into calibration, selection and test."""
    dataset = data if isinstance(data, accuracy.Dataset) else accuracy.load_data(data, model)
    return accuracy.split_three(dataset, accuracy.parse_split(fractions), seed)


def _search_data(model: Model, split: accuracy.SearchSplit, metric: str | None, max_drop: str | None,
                 given_budget: AccuracyBudget | None, judging: tuple[str, str], lossy: bool,
                 notes: list[str]) -> tuple[SearchData, dict, AccuracyBudget]:
    """The metric, the original's score and the budget on `split`; `judging` is (precision, acceptance);
    `max_drop` as the user wrote it and `given_budget` parsed from it (None: the metric's default). Also the
    accuracy budget as understood, for the user before the search and for the report, and as parsed."""
    precision, acceptance = judging
    metric = metric or accuracy.default_metric(split.selection, True)
    given = max_drop is not None
    max_drop = str(max_drop) if given else default_max_drop(metric)
    search_data = SearchData(split.calibration.inputs, split.selection, split.test, metric, accuracy.Evaluator(),
                             None, 0.0, split.calibration.fingerprint, precision, acceptance)
    scoring = time.perf_counter()
    original_score = search_data.original_score = search_data.score(model, split.selection, model)
    search_data.judge_s = time.perf_counter() - scoring
    budget = given_budget if given_budget is not None else parse_max_drop(max_drop)
    allowed = budget.allowed_drop(original_score.value)
    check_binds(metric, budget, original_score.value, allowed)
    if lossy:
        samples = len(split.calibration) + len(split.selection) + len(split.test)
        _check_resolution(samples, split, original_score, metric, allowed)
    # A zero budget admits only what changes nothing: there is no interval width to warn about.
    warning = accuracy.interval_warning(original_score, allowed) if original_score.half_width and allowed else None
    if warning:
        notes.append(warning)
    units = drop_units(metric)
    understood = {"metric": metric, "max_drop": max_drop, "given": given, "relative": budget.relative,
                  "allowed_drop": allowed, "units": units or None, "original_value": original_score.to_dict()["value"],
                  "precision": precision, "split": split.describe()}
    notes.append(f"accuracy budget: {describe_budget(understood)}; data split into {split.describe()}: passes fit "
                 "on calibration, the search judges on selection, the result is reported on test")
    if precision == "int8" and accuracy.is_quantized_model(model):
        notes.append("the model is already quantized: it and every rewrite of it are judged as they are, "
                     "without quantizing them again")
    elif precision == "int8":
        notes.append("every model is judged in int8, as the target runs it: onnxruntime's static QDQ quantization "
                     "(per-channel int8 weights, MinMax-calibrated int8 activations) on the calibration split")
    search_data.allowed_drop = allowed
    return search_data, understood, budget


def describe_budget(budget: dict) -> str:
    """One line, e.g. `top1 may drop at most 1 point from the original's 98.41 (--max-drop 1, top1's default),
    judged in int8`."""
    units = budget["units"]
    amount = f"{budget['allowed_drop']:.3g}" + (f" {units}" if units else "")
    if units == "points" and f"{budget['allowed_drop']:.3g}" == "1":
        amount = "1 point"
    origin = "as given" if budget["given"] else f"{budget['metric']}'s default"
    if budget["relative"]:
        origin = f"{budget['max_drop']} of the original's score, " + origin
    original = budget["original_value"]
    shown = f"{original:.4g}" if isinstance(original, float) else str(original)
    return (f"{budget['metric']} may drop at most {amount} from the original's {shown} "
            f"(--max-drop {budget['max_drop']}, {origin}), judged in {budget['precision']}")


def budget_lines(budget: dict) -> list[str]:
    """The budgets of a run in words, one per line, as the user is told them before the search."""
    lines = [f"budget: {describe_budget(budget['accuracy'])}" if budget["accuracy"] else
             "budget: no accuracy budget (no --data): only exact passes run"]
    memory = [f"{what} at most {budget[key]:,} B" for what, key in (("parameters", "max_param_bytes"),
                                                                   ("peak activations", "max_activation_bytes"))
              if budget[key]]
    if memory:
        lines.append("budget: " + "; ".join(memory))
    if budget["time_budget_s"]:
        lines.append(f"budget: the search stops after {budget['time_budget_s']:g} s with the best model so far")
    return lines


def _check_resolution(samples: int, split, original_score, metric: str, allowed: float) -> None:
    """Refuse data too small to check the budget: when one sample of the selection or the test split
    moves a proportion by more than the budget, a 'within budget' from it means nothing. A zero budget
    needs no resolution: it admits no drop at all."""
    smallest = min(len(split.selection), len(split.test))
    step = 100.0 / smallest if original_score.resolution is not None else None  # proportions only
    if step is not None and 0 < allowed < step:
        needed = math.ceil(100.0 / allowed)
        share = min(split.fractions[1:])
        raise TailorError(f"--data has {samples} samples, so one of the {smallest} in the smallest judging split moves "
                          f"{metric} by {step:.2f} points, more than the budget of {allowed:g}: the budget needs at "
                          f"least {needed} samples in each of the selection and test splits "
                          f"({math.ceil(needed / share)} in --data with this --split); exact passes run without "
                          "--data or with --passes naming only exact ones")


def optimize(model: Model, target: str | Target = "npu-p32", data=None, metric: str | None = None,
             max_drop: str | None = None, max_params: int | None = None, max_activation: int | None = None,
             passes: list[str] | None = None, search: str = "greedy", beam_width: int = 4,
             time_budget: float | None = None, seed: int = 0, split=accuracy.DEFAULT_SPLIT,
             precision: str | None = None, acceptance: str = "margin", measure: bool = False,
             progress: Callable[[str], None] | None = None,
             pass_params: dict[str, dict] | None = None, workers: int | None = 1, ray: str | None = None,
             cache_bytes: int | None = None) -> OptimizeResult:
    """Search for the fastest model that meets the constraints (see the module docstring).

    `precision` (fp32 | int8) is what accuracy is judged in; by default the target's own
    (int8 for the npu-* targets). `max_drop` defaults to the metric's own budget
    (`constraints.DEFAULT_MAX_DROP`: 1 point of top1 or agreement, 0.01 of cosine, 3 dB of sqnr).
    `progress` is called with one line of text at each event: the budget as understood before
    the search, then every new best model. `pass_params` fixes parameters of named passes for every site
    the search tries, e.g. {"fuse_ibn_expansion": {"refine": 0}}; the recipe records them.
    `time_budget` counts from this call and covers the work after the search: the search stops
    early enough to leave what judging and checking the result will take.
    `workers` apply and evaluate candidates in parallel local processes (None: one per core), or
    `ray` ('auto' or a cluster address) on Ray; the result is the same bytes as with one worker.
    Local workers are started with 'spawn', which imports the calling script again: a script that
    asks for workers needs the usual `if __name__ == "__main__":` guard around its work.
    `cache_bytes` bounds each process's cache of calibration tensors (`passes.tensor_cache`;
    None: a fraction of the memory, 0: no cache, every fit runs its models again)."""
    started = time.perf_counter()
    if cache_bytes is not None and cache_bytes < 0:
        raise TailorError(f"--cache-bytes must be 0 or more, not {cache_bytes}")
    with using(new_cache(cache_bytes)), contextlib.ExitStack() as closing:
        return _optimize(model, target, data, metric, max_drop, max_params, max_activation, passes, search,
                         beam_width, time_budget, seed, split, precision, acceptance, measure, progress,
                         pass_params, (workers, ray, cache_bytes), started, closing)


def _optimize(model, target, data, metric, max_drop, max_params, max_activation, passes, search, beam_width,
              time_budget, seed, split, precision, acceptance, measure, progress, pass_params,
              execution, started, closing: contextlib.ExitStack) -> OptimizeResult:
    if search not in STRATEGIES:
        raise TailorError(f"unknown search '{search}'; choose one of {', '.join(STRATEGIES)}")
    if not model.graph_inputs:  # no latency to win and nothing to judge: say so before any search or write
        raise TailorError("the model has no inputs: its outputs are constants, so there is nothing to optimize")
    target = target if isinstance(target, Target) else load_target(target)
    chosen_precision, precision = precision, precision or target.precision
    if precision not in PRECISIONS:
        raise TailorError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if acceptance not in ACCEPTANCES:
        raise TailorError(f"unknown acceptance rule '{acceptance}'; choose one of {', '.join(ACCEPTANCES)}")
    notes: list[str] = []
    elsewhere = measured_elsewhere(target)
    if elsewhere:
        notes.append(f"{target.name}'s kernels were measured on another machine ({elsewhere}): its predicted ms may "
                     "be off by a common factor here; rankings hold, and steps are accepted on measurement here")
    names = _passes(passes)
    pass_params = _pass_params(pass_params or {}, names)
    search_data, accuracy_budget, drop_budget = None, None, None
    # Parsed once, here: a malformed budget fails before the data loads, and is an error even where there
    # is nothing to judge.
    given_budget = parse_max_drop(max_drop) if max_drop is not None else None
    if data is not None and given_budget is not None and given_budget.amount == 0:
        # "No loss" means no lossy rewrite: one that flips no sample of the selection split still changes
        # the outputs, and would be accepted by a zero budget on that split alone.
        names = [name for name in names if get_pass(name).exactness is Exactness.EXACT]
        notes.append("--max-drop 0: only exact rewrites were tried")
    if data is not None:
        lossy = any(get_pass(name).exactness is Exactness.LOSSY for name in names)
        parts = _load_split(model, data, seed, split)  # once: a fall back to fp32 judges the same split
        try:
            search_data, accuracy_budget, drop_budget = _search_data(model, parts, metric, max_drop, given_budget,
                                                                     (precision, acceptance), lossy, notes)
        except QuantizationError as exc:
            if chosen_precision is not None or precision == "fp32":
                raise
            # The target's int8 was only a default: judging in fp32 with a note beats refusing the model.
            notes.append(f"judged in fp32, not in {target.name}'s int8: {exc}; the int8 model may lose more")
            search_data, accuracy_budget, drop_budget = _search_data(model, parts, metric, max_drop, given_budget,
                                                                     ("fp32", acceptance), lossy, notes)
    else:
        notes.append("no --data: only exact passes ran (there is nothing to check accuracy against)")
    constraints = Constraints(drop_budget, max_params, max_activation)
    budget = {"accuracy": accuracy_budget, "max_param_bytes": max_params, "max_activation_bytes": max_activation,
              "time_budget_s": time_budget}
    if progress is not None:  # before the search: what the run will hold every candidate to
        for line in budget_lines(budget):
            progress(line)
    ctx = SearchContext(model, target, names, constraints, search_data, time_budget, progress, pass_params,
                        started, *execution)
    # The workers stay for the work after the search too (the ceiling walk's previews, the replay's fits).
    closing.callback(ctx.close)
    if not ctx.root.latency_s:  # its outputs are its inputs or constants: no speed-up can be measured against 0
        raise TailorError("the model runs no kernel (its outputs are its inputs or constants): there is nothing "
                          "to optimize")
    interrupted = False
    try:
        if search == "greedy":
            greedy(ctx)
        elif search == "beam":
            beam(ctx, width=beam_width)
        else:
            evolutionary(ctx, population_size=max(beam_width, 2) * 2, seed=seed)
    except KeyboardInterrupt:
        interrupted = True
        notes.append("interrupted: the best model found so far is returned")
        ctx.close()  # Ctrl-C reached the workers too: what follows runs here
    ctx.settle()
    exhausted = ctx.out_of_time()
    if exhausted:
        notes.append(f"the time budget of {time_budget:g} s ran out: the best model found so far is returned")
    chosen = ctx.best
    if chosen is None:
        raise NoFeasibleModel(f"no model meets the constraints: the original's {ctx.root.reason}, "
                              "and no rewrite found fixed that")
    stopped = _why_stopped(ctx, chosen, "interrupted" if interrupted else "time budget" if exhausted else "converged")
    if not chosen.steps:
        notes.append(_why_nothing_helped(ctx))

    data_info = None
    calib = search_data.calibration if search_data else None
    fingerprint = search_data.calibration_fingerprint if search_data else None
    if search_data is not None:
        fractions = accuracy.parse_split(split)
        data_info = {"source": str(data) if not isinstance(data, accuracy.Dataset) else IN_MEMORY,
                     "seed": seed, "fraction": fractions[0], "split": list(fractions)}
    recipe = Recipe(model.content_hash, chosen.steps, dict(model.input_shapes), fingerprint, data_info, target.name)
    # The original, then the model after each step: the search's own, which are what a replay fits again
    # (a third of a MobileNetV2-224 search went to replaying); replayed when the search's path does not say.
    path = ctx.path(chosen)
    if path is None:
        path = replay_each(recipe, model, calib, fingerprint)
        if path[-1].content_hash != chosen.model.content_hash:
            notes.append("replaying the recipe gave different bytes than the search's own model; the replay is "
                         "written")
    test = None
    if search_data is not None:
        kept, test = _holding_on_test(search_data, path, notes)
        recipe = dataclasses.replace(recipe, steps=recipe.steps[:kept])
    final = path[len(recipe.steps)]
    _check_loadable(final)
    # Cached when identical (a node of the search's path); else measured anew.
    final_node = ctx.node(final, recipe.steps, chosen.local_error if recipe.steps == chosen.steps else None)
    if search_data is not None:  # the final model is judged again, on its own, before it is written
        judgement = search_data.judge(final, model)
        final_node.score, final_node.drop = judgement.score, judgement.drop
        if judgement.over_budget:
            raise RuntimeError(f"the final model breaks the budget on re-evaluation ({judgement.over_budget}); "
                               "nothing was written (a bug: please report it)")
    measured = ctx.measured.along(path[:len(recipe.steps) + 1])  # what the search already timed, if it did
    if measured is None and measure and target.kind == "ort":
        measured = ctx.measured.side_by_side(model, final)
    if measure and target.kind != "ort":
        notes.append(f"--measure times models with onnxruntime; {target.name} is {target.kind}, so nothing was timed")
    invocation = {"model": None, "data": data_info["source"] if data_info else None, "target": target.name,
                  "metric": search_data.metric if search_data else None, "max_drop": max_drop, "passes": names,
                  "pass_params": pass_params, "search": search, "beam_width": beam_width, "seed": seed,
                  "split": data_info["split"] if data_info else None,
                  "precision": search_data.precision if search_data else precision,
                  "acceptance": acceptance, "time_budget_s": time_budget, "measure": measure,
                  "output": None, "report": None, "recipe": None}
    within = final_node.feasible and (test is None or test["drop"] <= test["allowed_drop"] + 1e-9)
    outcome = {"within_budget": within, "improved": bool(recipe.steps), "interrupted": interrupted,
               "time_budget_exhausted": exhausted}
    report = build_report(ctx, final_node, search, notes, measured, test, stopped,
                          run={"invocation": invocation, "budget": budget, **outcome})
    return OptimizeResult(stamped(final, model, recipe), report, recipe, notes, ctx)


def _holding_on_test(data: SearchData, path: list[Model], notes: list[str]) -> tuple[int, dict]:
    """How many of the chosen steps to keep: the longest prefix of the path whose model holds the
    budget on the test split (the original always does), with its figures there for the report."""
    original, chosen = path[0], len(path) - 1
    original_score = data.score(original, data.test, original)
    judgement, kept, broken = Judgement(original_score, 0.0, None), 0, None
    for steps in range(chosen, 0, -1):  # the longest, fastest prefix first
        candidate = data.judge(path[steps], original, original_score, on_test=True)
        if candidate.over_budget is None:
            judgement, kept = candidate, steps
            break
        broken = broken or candidate
    if broken is not None:
        instead = f"the best earlier model on its path that holds there ({kept} steps)" if kept else "the original"
        notes.append(f"on the test split ({len(data.test)} samples the search never saw) the chosen "
                     f"{chosen}-step model {broken.over_budget}; {instead} is returned instead")
    low_high = accuracy.drop_interval(original_score, judgement.score)
    figures = {"split": "test", "n": len(data.test), "precision": data.precision, "original": original_score.to_dict(),
               "optimized": judgement.score.to_dict(), "drop": judgement.drop,
               "drop_ci": list(low_high) if low_high else None, "allowed_drop": data.allowed_drop,
               "steps_kept": kept, "steps_chosen": chosen, "fp32": None}
    if data.precision != "fp32":  # the same two models unquantized, for comparison
        figures["fp32"] = {"original": data.score(original, data.test, original, "fp32").to_dict(),
                           "optimized": data.score(path[kept], data.test, original, "fp32").to_dict()}
    return kept, figures


def _why_stopped(ctx: SearchContext, chosen, why: str) -> dict:
    """Why the search ended, what became of each remaining candidate (per pass), and the ceiling: the
    predicted latency with every candidate applied on top of the chosen model whatever its accuracy,
    so that the report says how much of the available gain was taken."""
    remaining = ctx.fates(chosen, timed_out=why == "time budget") if why != "interrupted" else {}
    top, finished = ctx.ceiling(chosen)
    if not finished and top is chosen:  # the budget left no time for even one step of the walk
        return {"why": why, "remaining": remaining, "ceiling": None}
    original = ctx.root.latency_s
    available = original - top.latency_s
    ceiling = {"predicted_ms": top.latency_s * 1e3, "speedup_predicted": original / top.latency_s,
               "steps_beyond_chosen": len(top.steps) - len(chosen.steps), "complete": finished,
               "share_taken": (original - chosen.latency_s) / available if available > 0 else 1.0}
    if ctx.target.simulated and not ctx.finish_due():
        ceiling["simulated_ms"] = simulate(top.model, ctx.target).latency_s * 1e3
    return {"why": why, "remaining": remaining, "ceiling": ceiling}


def _why_nothing_helped(ctx: SearchContext) -> str:
    fates = [e["fate"] for e in ctx.log]
    if not fates:
        return "nothing beat the original: no pass found a site to rewrite; the original is returned unchanged"
    slower = fates.count(PREDICTED_SLOWER)
    budget = fates.count(OVER_ACCURACY_BUDGET) + fates.count(OVER_MEMORY_BUDGET)
    error = fates.count(LOCAL_ERROR_TOO_LARGE)
    timed = fates.count(NOT_MEASURABLY_FASTER)
    measured = f", {timed} not measurably faster" if timed else ""
    return (f"nothing beat the original ({len(fates)} candidates: {slower} predicted no faster, {budget} over "
            f"a budget, {error} with too large a local error{measured}); the original is returned unchanged")


def _check_loadable(model: Model) -> None:
    """The written model must pass the onnx checker and load in onnxruntime."""
    try:
        if model.fits:  # past 2 GiB the checker cannot take it; onnxruntime's own checks still run
            onnx.checker.check_model(model.proto)
        session(model)
    except Exception as exc:  # a bug, not a user error: keep the cause
        raise RuntimeError(f"the optimized model failed its final check: {exc}") from exc
