"""onnx-tailor: graph-rewriting passes that fit a trained ONNX model to its accelerator."""

from .api import apply, apply_recipe, inspect, load, optimize, save, score
from .errors import TailorError
from .ir import Model

__all__ = ["Model", "TailorError", "apply", "apply_recipe", "inspect", "load", "optimize", "save", "score"]
