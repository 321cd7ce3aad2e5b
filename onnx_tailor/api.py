"""The public Python API: what the CLI does, callable from a deployment pipeline.

    import onnx_tailor as ot
    model = ot.load("model.onnx", input_shapes={"x": (1, 3, 48, 192)})
    report = ot.inspect(model)                      # MACs, params, peak activations, IBN blocks
    result = ot.apply(model, "pad_channels", params={"multiple": 32})
    ot.save(result.model, "model.aligned.onnx")
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from .analysis import Analysis, analyze
from .ir import Model, Shape, load, save
from .passes import Applied, apply_pass


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
    return apply_pass(_as_model(model, input_shapes), pass_name, site, params)


__all__ = ["Model", "inspect", "apply", "load", "save"]
