"""The accuracy check: data, the calibration/evaluation split, metrics with confidence intervals.

    from onnx_tailor import accuracy
    data = accuracy.load_data("models/digits_eval.npz", model)    # or an image folder, or "random"
    split = accuracy.split_dataset(data, calibration=0.5, seed=0)  # passes fit on split.calibration
    score = accuracy.evaluate(variant, split.evaluation, "agreement", reference=model)
    print(score)              # e.g. agreement 99.44% (95% CI [96.92, 99.90], Wilson, n=180)
    accuracy.interval_warning(score, budget=1.0)   # a warning string when the CI is too wide, else None

Modules: `data` (Dataset, .npz, random, validation against a model),
`images` (image folders), `sources` (`load_data`), `split`, `score` (Score), `intervals` (Wilson,
bootstrap, the budget warning), `metrics` (built-ins and plug-ins),
`evaluate` (running models, caching the original's outputs, comparing two),
`quantize` (the int8 QDQ model the device runs, by onnxruntime's static quantizer).
"""

from .data import Dataset, load_npz, probed_on, random_dataset, validate
from .evaluate import Evaluator, ModelComparison, compare, evaluate
from .images import ImageSpec, load_image_folder, parse_image_spec
from .intervals import (bootstrap_interval, drop_interval, drop_standard_error, interval_warning, interval_warnings,
                        wilson_interval)
from .metrics import BUILTIN, FIDELITY, Metric, default_metric, get_metric, load_plugin
from .quantize import is_quantized_model, quantize_qdq
from .score import Score
from .sources import RANDOM, load_data
from .split import DEFAULT_SPLIT, SearchSplit, Split, parse_split, split_dataset, split_three

__all__ = [
    "BUILTIN", "DEFAULT_SPLIT", "FIDELITY", "RANDOM", "Dataset", "Evaluator", "ImageSpec", "Metric",
    "ModelComparison", "Score", "SearchSplit", "Split", "bootstrap_interval", "compare", "default_metric",
    "drop_interval", "drop_standard_error", "evaluate", "get_metric", "interval_warning", "interval_warnings", "load_data",
    "is_quantized_model", "load_image_folder", "load_npz", "load_plugin", "parse_image_spec", "parse_split", "probed_on",
    "quantize_qdq",
    "random_dataset", "split_dataset", "split_three", "validate", "wilson_interval",
]
