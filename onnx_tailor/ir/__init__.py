"""The model layer: load, canonicalize, save, run and compare ONNX models."""

from .io import load, read_proto, save
from .model import Model, Shape
from .runtime import Comparison, check_equivalence, compare_outputs, run, seeded_inputs, session

__all__ = ["Model", "Shape", "load", "read_proto", "save", "Comparison", "check_equivalence",
           "compare_outputs", "run", "seeded_inputs", "session"]
