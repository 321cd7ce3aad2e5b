"""The model layer: read, save, run and compare ONNX models (canonical loading is `passes.canonicalize.load`)."""

from .io import read_proto, save
from .model import Model, Shape
from .runtime import Comparison, check_equivalence, compare_outputs, run, seeded_inputs, session

__all__ = ["Model", "Shape", "read_proto", "save", "Comparison", "check_equivalence",
           "compare_outputs", "run", "seeded_inputs", "session"]
