"""The public Python API: what the CLI does, callable from a deployment pipeline.

    import onnx_tailor as ot
    model = ot.load("model.onnx", input_shapes={"x": (1, 3, 48, 192)})
    report = ot.inspect("model.onnx", {"x": (1, 3, 48, 192)})   # MACs, params, peak memory, ops, blocks
    cost = ot.score(model, "npu-p32")               # predicted latency, memory, per-kernel table
    aligned = ot.apply(model, "pad_channels", params={"multiple": 32})   # .model, .sites, .local_errors
    result = ot.optimize(model, "npu-p32", data="eval.npz", max_drop="1.0")
    ot.save(result.model, "model.npu.onnx")         # result.report, result.recipe.write("recipe.json")
    again = ot.apply_recipe(model, result.recipe, data="eval.npz")   # the same bytes

Every result has `to_dict()` (JSON-ready; latencies in milliseconds).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from . import accuracy
from .analysis import Analysis, analyze, in_given_terms
from .costmodel import CostReport, load_target
from .costmodel import score as cost_score
from .errors import TailorError
from .ir import Model, Shape, read_proto, save
from .passes import PassApplied, apply_pass
from .passes.canonicalize import EXPORTED_STEPS, canonicalize, load
from .search import OptimizeResult, Recipe, read_recipe, replay, split_data, stamped
from .search import optimize as run_optimize

ModelLike = Model | str | os.PathLike


def _as_model(model: ModelLike, input_shapes: Mapping[str, Shape] | None) -> Model:
    if isinstance(model, Model):
        return model.with_input_shapes(input_shapes) if input_shapes else model
    return load(model, input_shapes)


def with_data(model: Model, data) -> Model:
    """`model` with the shapes that depend on input values probed on `data` (an .npz path, an image
    folder, an `accuracy.Dataset`, or calibration inputs as a dict) instead of seeded random inputs.
    'random' and None change nothing: seeded inputs are what probing uses anyway."""
    if data is None or (isinstance(data, (str, os.PathLike)) and str(data) == accuracy.RANDOM):
        return model
    if isinstance(data, dict):
        data = accuracy.Dataset(data, description="calibration inputs")
    dataset = data if isinstance(data, accuracy.Dataset) else accuracy.load_data(data, model)
    return accuracy.probed_on(model, dataset)


def dataset_of(arrays: Mapping[str, Any]) -> accuracy.Dataset:
    """A dataset from arrays in memory, keyed as in an .npz: model input names, samples first, and
    optionally 'labels' ([N] integers)."""
    inputs = {name: array for name, array in arrays.items() if name != "labels"}
    return accuracy.Dataset(inputs, arrays.get("labels"), description="in-memory arrays")


def inspect(model: ModelLike, input_shapes: Mapping[str, Shape] | None = None, *, data=None,
            canonical: bool = False) -> Analysis:
    """Costs and structure of a model: MACs, parameters, peak activation memory, op counts, IBN blocks
    and expand-depthwise pairs.

    A path is read once and analysed in two forms: canonicalized (what passes, sites and recipes see)
    for MACs, parameters, blocks and pairs, and as given (only Constant nodes lifted and shapes
    inferred) for the op counts and the peak activation memory with the node it peaks at, so that
    they read in the model's own terms (a node the file leaves unnamed is named by its op and the
    tensor it writes). `canonical=True` reports everything in canonical form, as does a `Model`
    (already canonical). `data` probes shapes that depend on input values (see `with_data`)."""
    if isinstance(model, Model):
        return analyze(with_data(model.with_input_shapes(input_shapes) if input_shapes else model, data))
    proto = read_proto(model)
    report = analyze(with_data(Model(canonicalize(proto, str(model)), input_shapes), data))
    if canonical:
        return report
    try:
        given = with_data(Model(canonicalize(proto, str(model), EXPORTED_STEPS), input_shapes), data)
        return in_given_terms(report, given, {node.name for node in proto.graph.node if node.name})
    except TailorError as error:  # shapes only canonicalization makes known: the canonical figures still hold
        report.warnings.append(f"op counts and peak memory are of the canonical form: as given, {error}")
        return report


def apply(model: ModelLike, pass_name: str, site: str | None = None, params: Mapping[str, Any] | None = None,
          data=None, *, seed: int = 0, input_shapes: Mapping[str, Shape] | None = None) -> PassApplied:
    """Apply one pass at one site (by anchor node name) or at all its sites; returns a new model.

    `data` is what lossy passes fit on: calibration inputs (a dict from model input
    name to a batch), or a dataset (an .npz path, an image folder, 'random', an
    `accuracy.Dataset`) whose calibration half (split as `optimize` splits it,
    with `seed`) is used. Without it, lossy passes fit on seeded random inputs.
    The new model keeps the input's doc_string and metadata_props and records the tool version."""
    loaded = with_data(_as_model(model, input_shapes), data)
    calib = data if data is None or isinstance(data, dict) else split_data(loaded, data, seed, 0.5).calibration.inputs
    applied = apply_pass(loaded, pass_name, site, params, calib)
    return replace(applied, model=stamped(applied.model, loaded))


def score(model: ModelLike, target: str = "npu-p32", input_shapes: Mapping[str, Shape] | None = None) -> CostReport:
    """Predicted latency (and, for simulated targets, the simulator's), memory and per-kernel costs;
    `.to_dict()` gives them in milliseconds."""
    return cost_score(_as_model(model, input_shapes), load_target(target))


def optimize(model: ModelLike, target: str = "npu-p32", data=None, *, metric: str | None = None,
             max_drop: str | None = None, max_params: int | None = None, max_activation: int | None = None,
             passes: list[str] | None = None, search: str = "greedy", beam_width: int = 4,
             time_budget: float | None = None, seed: int = 0, split=accuracy.DEFAULT_SPLIT,
             precision: str | None = None, acceptance: str = "margin", measure: bool = False,
             progress: Callable[[str], None] | None = None, pass_params: dict[str, dict] | None = None,
             workers: int | None = 1, ray: str | None = None, cache_bytes: int | None = None,
             input_shapes: Mapping[str, Shape] | None = None) -> OptimizeResult:
    """The fastest variant of `model` on `target` that keeps accuracy and memory within budget.

    model: a `Model` or the path of an .onnx file (loaded and canonicalized; `input_shapes` fixes
        dynamic dimensions, e.g. {"x": (1, 3, 224, 224)}).
    target: a built-in target (`onnx-tailor targets` lists them: npu-p16, npu-p32, npu-p64, cpu-ort)
        or the path of a profile .json.
    data: what accuracy is judged on: the path of an .npz or of an image folder, "random", a dict of
        arrays keyed as in an .npz (model input names, samples first, optional "labels"), or an
        `accuracy.Dataset`. It is split (`split`, seeded by `seed`) into a calibration part that lossy
        passes fit on, a selection part the search judges candidates on, and a test part only the result
        is judged on. None: only exact passes run.
    metric: top1, agreement, cosine, sqnr or "module:function"; default top1 when the data has labels,
        else agreement.
    max_drop: the largest allowed drop of the metric against the original, in the metric's units
        ("1.0": one point of top1) or relative ("1%"); default the metric's own (1 point of top1 or
        agreement, 0.01 of cosine, 3 dB of sqnr); "0" tries exact rewrites only.
    max_params, max_activation: budgets in bytes for the parameters and the peak activation memory.
    passes: the passes the search may use (default: every rewrite; `onnx-tailor passes` lists them).
    pass_params: parameters fixed for every site the search tries, per pass, e.g.
        {"fuse_ibn_expansion": {"refine": 0}}; the recipe records them.
    search: "greedy", "beam" (keeping `beam_width` sequences) or "evolutionary" (a population of twice
        `beam_width`).
    time_budget: seconds, counted from this call, within which the search stops with the best model so
        far (as Ctrl-C does), leaving time to replay, judge and check the result.
    precision: what accuracy is judged in, "fp32" or "int8" (every model quantized with onnxruntime's
        static QDQ quantization, calibrated on the calibration part); default the target's own.
    acceptance: "margin" (a candidate's drop plus one standard error must hold the budget) or "point".
    measure: for measured targets (cpu-ort), time the original and the result side by side.
    progress: called with one line of text per event of the search ("best so far: 0.1234 ms predicted,
        top1 98.4 after 2 step(s)", "step 2: <pass>@<anchor>[params] -> 0.1234 ms predicted", a beam
        round, an evolutionary generation), for a log or a progress bar; default: silent.
    workers, ray: apply and evaluate candidates in `workers` local processes (None: one per core) or
        on a Ray cluster (`ray="auto"` or its address; the `ray` extra); the same bytes as one worker.
        Local workers start with 'spawn': a script that asks for them needs the
        `if __name__ == "__main__":` guard.
    cache_bytes: memory each process may keep calibration tensors in across fits (None: 1/8 of the
        machine's memory; 0: none).

    Returns an `OptimizeResult`: `.model` (the model to write, with provenance in its metadata),
    `.report` (what report.json holds), `.recipe` (`.write(path)`; `apply_recipe` replays it),
    `.notes`, `.improved`, `.emitted("qdq")` for the int8 QDQ model, and `.to_dict()`.
    Raises `TailorError` (one line, for the user) on bad input, and `NoFeasibleModel` when not even
    the original meets the constraints.
    """
    if isinstance(data, Mapping):
        data = dataset_of(data)
    loaded = with_data(_as_model(model, input_shapes), data)
    return run_optimize(loaded, target, data=data, metric=metric, max_drop=max_drop, max_params=max_params,
                        max_activation=max_activation, passes=passes, search=search, beam_width=beam_width,
                        time_budget=time_budget, seed=seed, split=split, precision=precision,
                        acceptance=acceptance, measure=measure, progress=progress, pass_params=pass_params,
                        workers=workers, ray=ray, cache_bytes=cache_bytes)


def apply_recipe(model: ModelLike, recipe: Recipe | str | os.PathLike, data=None,
                 input_shapes: Mapping[str, Shape] | None = None, emit: str = "fp32") -> Model:
    """Replay a recipe (a `search.Recipe` or the path of recipe.json) on the model it was made for.

    Without `data`, lossy steps refit on the data the recipe was made with (its path is kept relative
    to the recipe file); the model returned carries the metadata `optimize` gave it, byte for byte.

    `emit="qdq"` returns the replayed model quantized to int8 QDQ, calibrated on the same
    calibration split: the bytes `optimize --emit qdq` wrote."""
    if emit not in ("fp32", "qdq"):
        raise TailorError(f"unknown --emit '{emit}'; choose fp32 or qdq")
    recipe = recipe if isinstance(recipe, Recipe) else read_recipe(Path(recipe))
    loaded = _as_model(model, {**recipe.input_shapes, **dict(input_shapes or {})})
    source_model = loaded
    calibration = fingerprint = None
    if recipe.needs_data or emit == "qdq":
        made_with = recipe.data or {}
        source = data if data is not None else recipe.data_source
        if source is None:
            raise TailorError("the quantization calibrates on the data the recipe was made with: give --data")
        if data is None and source != accuracy.RANDOM and not Path(source).exists():
            named = f"recipe {recipe.origin}" if recipe.origin else "the recipe"
            raise TailorError(f"{named} was made with data {source}, which does not exist (data paths are kept "
                              "relative to the recipe file): give the same data with --data")
        loaded = with_data(loaded, source)
        split = split_data(loaded, source, made_with.get("seed", 0), made_with.get("fraction", 0.5))
        calibration, fingerprint = split.calibration.inputs, split.calibration.fingerprint
    else:
        loaded = with_data(loaded, data)
    replayed = replay(recipe, loaded, calibration if recipe.needs_data else None, fingerprint)
    written = replayed if emit == "fp32" else accuracy.quantize_qdq(replayed, calibration)
    return stamped(written, source_model, recipe)


__all__ = ["Model", "apply", "apply_recipe", "dataset_of", "inspect", "load", "optimize", "save", "score",
           "with_data"]
