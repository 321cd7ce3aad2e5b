"""The model layer: read, save, run and compare ONNX models (canonical loading is `passes.canonicalize.load`)."""

from .batch import BatchLayout, batch_layout, run_samples, seeded_samples
from .io import read_proto, save
from .model import Model, Shape
from .runtime import Comparison, check_equivalence, compare_outputs, run, seeded_inputs, session

__all__ = ["BatchLayout", "Model", "Shape", "batch_layout", "read_proto", "run_samples", "save", "seeded_samples",
           "Comparison", "check_equivalence", "compare_outputs", "run", "seeded_inputs", "session"]
