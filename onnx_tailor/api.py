"""The public Python API: what the CLI does, callable from a deployment pipeline.

    import onnx_tailor as ot
    model = ot.load("model.onnx", input_shapes={"x": (1, 3, 48, 192)})
    report = ot.inspect(model)                      # MACs, params, peak activations, IBN blocks
    cost = ot.score(model, "npu-p32")               # predicted latency, memory, per-kernel table
    result = ot.optimize(model, "npu-p32", data="eval.npz", max_drop="1.0")
    ot.save(result.model, "model.npu.onnx")         # result.report, result.recipe.write("recipe.json")
    again = ot.apply_recipe(model, result.recipe, data="eval.npz")   # the same bytes
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from .analysis import Analysis, analyze
from .ir import Model, Shape, save
from .passes import Applied
from .passes import apply_pass as _apply_pass
from .passes.canonicalize import load


def _as_model(model: Model | str | os.PathLike, input_shapes: Mapping[str, Shape] | None) -> Model:
    if isinstance(model, Model):
        return model.with_input_shapes(input_shapes) if input_shapes else model
    return load(model, input_shapes)


def inspect(model: Model | str | os.PathLike, input_shapes: Mapping[str, Shape] | None = None) -> Analysis:
    """Costs and structure of a model (a path is loaded and canonicalized first)."""
    return analyze(_as_model(model, input_shapes))


def apply(model: Model | str | os.PathLike, pass_name: str, site: str | None = None,
          params: Mapping[str, Any] | None = None, input_shapes: Mapping[str, Shape] | None = None) -> Applied:
    """Apply one pass at one site (by anchor node name) or at all its sites; returns a new model."""
    return _apply_pass(_as_model(model, input_shapes), pass_name, site, params)


def apply_pass(model: Model, pass_name: str, site: str | None = None, params: Mapping[str, Any] | None = None,
               calib=None) -> Applied:
    """`apply` with calibration inputs (a dict of model-input batches) for data-aware lossy passes."""
    return _apply_pass(model, pass_name, site, params, calib)


def score(model: Model | str | os.PathLike, target: str = "npu-p32",
          input_shapes: Mapping[str, Shape] | None = None):
    """Predicted latency (and, for simulated targets, the simulator's), memory and per-kernel costs."""
    from .costmodel import load_target
    from .costmodel import score as cost_score

    return cost_score(_as_model(model, input_shapes), load_target(target))


def optimize(model: Model | str | os.PathLike, target: str = "npu-p32", data=None, *,
             input_shapes: Mapping[str, Shape] | None = None, **options):
    """The fastest variant within the constraints: see `onnx_tailor.search.optimize` for the options."""
    from .search import optimize as run_optimize

    return run_optimize(_as_model(model, input_shapes), target, data=data, **options)


def apply_recipe(model: Model | str | os.PathLike, recipe, data=None,
                 input_shapes: Mapping[str, Shape] | None = None) -> Model:
    """Replay a recipe (a `search.Recipe` or the path of recipe.json) on the model it was made for."""
    from pathlib import Path

    from .search import read_recipe, replay, split_data

    recipe = recipe if not isinstance(recipe, (str, os.PathLike)) else read_recipe(Path(recipe))
    loaded = _as_model(model, {**recipe.input_shapes, **dict(input_shapes or {})})
    calibration = fingerprint = None
    if recipe.needs_data:
        source = data if data is not None else (recipe.data or {}).get("source")
        split = split_data(loaded, source, (recipe.data or {}).get("seed", 0), (recipe.data or {}).get("fraction", 0.5))
        calibration, fingerprint = split.calibration.inputs, split.calibration.fingerprint
    return replay(recipe, loaded, calibration, fingerprint)


__all__ = ["Model", "apply", "apply_recipe", "inspect", "load", "optimize", "save", "score"]
