"""onnx-tailor: graph-rewriting passes that fit a trained ONNX model to its accelerator."""

from .api import apply, apply_recipe, inspect, load, optimize, save, score
from .errors import TailorError
from .ir import Model
from .version import __version__

__all__ = ["Model", "TailorError", "__version__", "apply", "apply_recipe", "inspect", "load", "optimize", "save",
           "score"]
