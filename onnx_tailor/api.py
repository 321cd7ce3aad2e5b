"""The public Python API: what the CLI does, callable from a deployment pipeline.

    import onnx_tailor as ot
    model = ot.load("model.onnx", input_shapes={"x": (1, 3, 48, 192)})
    report = ot.inspect(model)                      # MACs, params, peak activations, IBN blocks, pairs
    cost = ot.score(model, "npu-p32")               # predicted latency, memory, per-kernel table
    aligned = ot.apply(model, "pad_channels", params={"multiple": 32})   # .model, .sites, .local_errors
    result = ot.optimize(model, "npu-p32", data="eval.npz", max_drop="1.0")
    ot.save(result.model, "model.npu.onnx")         # result.report, result.recipe.write("recipe.json")
    again = ot.apply_recipe(model, result.recipe, data="eval.npz")   # the same bytes
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from . import accuracy
from .analysis import Analysis, analyze
from .costmodel import CostReport, load_target
from .costmodel import score as cost_score
from .errors import TailorError
from .ir import Model, Shape, save
from .passes import PassApplied, apply_pass
from .passes.canonicalize import load
from .search import OptimizeResult, Recipe, read_recipe, replay, split_data
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


def inspect(model: ModelLike, input_shapes: Mapping[str, Shape] | None = None) -> Analysis:
    """Costs and structure of a model (a path is loaded and canonicalized first)."""
    return analyze(_as_model(model, input_shapes))


def apply(model: ModelLike, pass_name: str, site: str | None = None, params: Mapping[str, Any] | None = None,
          data=None, *, seed: int = 0, input_shapes: Mapping[str, Shape] | None = None) -> PassApplied:
    """Apply one pass at one site (by anchor node name) or at all its sites; returns a new model.

    `data` is what lossy passes fit on: calibration inputs (a dict from model input
    name to a batch), or a dataset (an .npz path, an image folder, 'random', an
    `accuracy.Dataset`) whose calibration half (split as `optimize` splits it,
    with `seed`) is used. Without it, lossy passes fit on seeded random inputs."""
    loaded = with_data(_as_model(model, input_shapes), data)
    calib = data if data is None or isinstance(data, dict) else split_data(loaded, data, seed, 0.5).calibration.inputs
    return apply_pass(loaded, pass_name, site, params, calib)


def score(model: ModelLike, target: str = "npu-p32", input_shapes: Mapping[str, Shape] | None = None) -> CostReport:
    """Predicted latency (and, for simulated targets, the simulator's), memory and per-kernel costs."""
    return cost_score(_as_model(model, input_shapes), load_target(target))


def optimize(model: ModelLike, target: str = "npu-p32", data=None, *,
             input_shapes: Mapping[str, Shape] | None = None, **options) -> OptimizeResult:
    """The fastest variant within the constraints: see `onnx_tailor.search.optimize` for the options."""
    return run_optimize(with_data(_as_model(model, input_shapes), data), target, data=data, **options)


def apply_recipe(model: ModelLike, recipe: Recipe | str | os.PathLike, data=None,
                 input_shapes: Mapping[str, Shape] | None = None, emit: str = "fp32") -> Model:
    """Replay a recipe (a `search.Recipe` or the path of recipe.json) on the model it was made for.

    `emit="qdq"` returns the replayed model quantized to int8 QDQ, calibrated on the same
    calibration split: the bytes `optimize --emit qdq` wrote."""
    if emit not in ("fp32", "qdq"):
        raise TailorError(f"unknown --emit '{emit}'; choose fp32 or qdq")
    recipe = recipe if isinstance(recipe, Recipe) else read_recipe(Path(recipe))
    loaded = _as_model(model, {**recipe.input_shapes, **dict(input_shapes or {})})
    calibration = fingerprint = None
    if recipe.needs_data or emit == "qdq":
        made_with = recipe.data or {}
        source = data if data is not None else made_with.get("source")
        if source is None:
            raise TailorError("the quantization calibrates on the data the recipe was made with: give --data")
        loaded = with_data(loaded, source)
        split = split_data(loaded, source, made_with.get("seed", 0), made_with.get("fraction", 0.5))
        calibration, fingerprint = split.calibration.inputs, split.calibration.fingerprint
    else:
        loaded = with_data(loaded, data)
    replayed = replay(recipe, loaded, calibration if recipe.needs_data else None, fingerprint)
    return replayed if emit == "fp32" else accuracy.quantize_qdq(replayed, calibration)


__all__ = ["Model", "apply", "apply_recipe", "inspect", "load", "optimize", "save", "score", "with_data"]
