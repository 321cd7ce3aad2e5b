"""onnx-tailor: graph-rewriting passes that fit a trained ONNX model to its accelerator."""

from .api import apply, inspect, load, save
from .errors import TailorError
from .ir import Model

__all__ = ["Model", "TailorError", "apply", "inspect", "load", "save"]
