"""Metrics: built-ins against direct numpy computations, fidelity of perturbed models, plug-ins."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

from onnx_tailor import accuracy
from onnx_tailor.errors import DataError, MetricError
from tests.conftest import DIGITS

from .conftest import DIGITS_EVAL, perturb


def test_top1_of_the_digits_model_matches_a_direct_computation(digits, digits_data):
    # Straight from the file with onnxruntime and numpy, as models/README.md measures it.
    sess = ort.InferenceSession(str(DIGITS.path), providers=["CPUExecutionProvider"])
    with np.load(DIGITS_EVAL) as archive:
        logits = sess.run(["logits"], {"input": archive["input"]})[0]
        correct = int((logits.argmax(axis=1) == archive["labels"]).sum())
    score = accuracy.evaluate(digits, digits_data, "top1")
    assert correct == 357
    assert score.value == pytest.approx(100 * correct / 360) and score.n == 360
    low, high = accuracy.wilson_interval(correct, 360)
    assert (score.ci_low, score.ci_high) == pytest.approx((100 * low, 100 * high))
    assert str(score) == "top1 99.17% (95% CI [97.58, 99.72], Wilson, n=360)"


def test_a_model_agrees_with_itself(digits, digits_data):
    scores = accuracy.Evaluator().scores(digits, digits_data, ["agreement", "cosine", "sqnr"], reference=digits)
    assert scores["agreement"].value == 100.0 and scores["agreement"].ci_high == 100.0
    assert scores["cosine"].value == pytest.approx(1.0, abs=1e-12)
    assert scores["sqnr"].value == float("inf")


def test_more_noise_in_the_weights_means_lower_fidelity(digits, digits_data):
    evaluator = accuracy.Evaluator()
    slight, heavy = (evaluator.scores(perturb(digits, noise), digits_data, ["agreement", "cosine", "sqnr"], digits)
                     for noise in (0.1, 0.3))
    for name in ("agreement", "cosine", "sqnr"):
        assert heavy[name].value < slight[name].value, name
    assert slight["agreement"].value < 100.0 and slight["cosine"].value < 1.0 and np.isfinite(slight["sqnr"].value)
    assert slight["cosine"].ci_low <= slight["cosine"].value <= slight["cosine"].ci_high


def outputs_of(array):
    return {"y": np.asarray(array, dtype=np.float32)}


def test_sqnr_and_cosine_by_hand():
    data = accuracy.Dataset({"x": np.zeros((4, 1), np.float32)})
    reference = outputs_of(np.ones((4, 5)))
    # out = 1.1 * ref: noise energy is 0.01 of the signal's, 20 dB; every row points the same way.
    scaled = outputs_of(1.1 * np.ones((4, 5)))
    assert accuracy.get_metric("sqnr")(scaled, data, reference).value == pytest.approx(20.0, abs=1e-5)
    assert accuracy.get_metric("cosine")(scaled, data, reference).value == pytest.approx(1.0)
    # Orthogonal rows have cosine 0; an all-zero row against a non-zero one counts as 0 as well.
    rows = np.array([[1, 0], [0, 1], [0, 0], [2, 2]])
    ref_rows = np.array([[0, 1], [0, 1], [1, 1], [-2, -2]])
    cosine = accuracy.get_metric("cosine")(outputs_of(rows), data, outputs_of(ref_rows))
    assert cosine.value == pytest.approx((0 + 1 + 0 - 1) / 4)


def test_top1_without_labels_and_fidelity_without_a_reference_are_refused(digits, digits_data):
    unlabelled = accuracy.load_data("random", digits)
    with pytest.raises(MetricError, match=r"top1 needs labels, and random \(seed 0\) has none"):
        accuracy.evaluate(digits, unlabelled, "top1")
    with pytest.raises(MetricError, match="agreement compares a model's outputs with the original model's"):
        accuracy.evaluate(digits, digits_data, "agreement")


def test_labels_beyond_the_models_classes(digits, digits_data):
    data = accuracy.Dataset(digits_data.inputs, np.where(digits_data.labels == 9, 12, digits_data.labels), "relabelled")
    data = data.subset(range(40))
    with pytest.raises(DataError, match=r"labels go up to 12, but output 'logits' scores 10 classes \(0-9\)"):
        accuracy.evaluate(digits, data, "top1")


def test_top1_needs_class_scores():
    data = accuracy.Dataset({"x": np.zeros((3, 1), np.float32)}, np.array([0, 1, 0]))
    with pytest.raises(MetricError, match=r"output 'y' has per-sample shape \[4, 4\]; top1 and agreement need"):
        accuracy.get_metric("top1")(outputs_of(np.zeros((3, 4, 4))), data)


def test_unknown_metric_names_the_known_ones():
    with pytest.raises(MetricError, match="unknown metric 'top5'; the metrics are top1, agreement, cosine, sqnr"):
        accuracy.get_metric("top5")


# -- plug-ins -----------------------------------------------------------------------------

PLUGIN = """
    import numpy as np

    def mean_logit(outputs, dataset, reference):
        return float(outputs["logits"].mean())

    def error_rate(outputs, dataset, reference):
        return 100 * float(np.mean(outputs["logits"].argmax(1) != dataset.labels)), False

    def correct(outputs, dataset, reference):
        return (outputs["logits"].argmax(1) == dataset.labels).astype(float) * 100

    def changed(outputs, dataset, reference):
        return float(np.abs(outputs["logits"] - reference["logits"]).max())

    def broken(outputs, dataset, reference):
        raise KeyError("boxes")

    def wrong_type(outputs, dataset, reference):
        return {"value": 1}

    NOT_A_FUNCTION = 3
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A metric module `tailor_test_metrics` on sys.path for this test only."""
    (tmp_path / "tailor_test_metrics.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "tailor_broken_metrics.py").write_text("import a_module_nobody_has\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tailor_test_metrics"
    for name in ("tailor_test_metrics", "tailor_broken_metrics"):
        sys.modules.pop(name, None)


def test_plugin_numbers_pairs_and_per_sample_values(plugin, digits, digits_data):
    names = ["top1"] + [f"{plugin}:{f}" for f in ("mean_logit", "error_rate", "correct", "changed")]
    scores = accuracy.Evaluator().scores(digits, digits_data, names, reference=digits)
    top1, mean, error, per_sample, changed = (scores[name] for name in names)
    assert mean.name == f"{plugin}:mean_logit" and mean.higher_is_better and mean.ci_low is None and mean.n == 360
    assert error.value == pytest.approx(100 - top1.value) and not error.higher_is_better
    assert per_sample.value == pytest.approx(top1.value)
    assert per_sample.ci_low < per_sample.value <= per_sample.ci_high  # bootstrapped from per-sample values
    assert changed.value == 0.0  # the plug-in got the reference's outputs


def test_plugin_in_the_current_directory_is_found(tmp_path, monkeypatch, digits, digits_data):
    (tmp_path / "tailor_cwd_metric.py").write_text("def one(outputs, dataset, reference):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    try:
        assert accuracy.evaluate(digits, digits_data.subset(range(20)), "tailor_cwd_metric:one").value == 1.0
    finally:
        sys.modules.pop("tailor_cwd_metric", None)
    assert str(tmp_path) not in sys.path  # looked there for the import only


@pytest.mark.parametrize("name, message", [
    ("tailor_no_such_module:f",
     "metric plug-in 'tailor_no_such_module:f': cannot import tailor_no_such_module: "
     "ModuleNotFoundError: No module named 'tailor_no_such_module'"),
    ("tailor_broken_metrics:f",
     "metric plug-in 'tailor_broken_metrics:f': cannot import tailor_broken_metrics: "
     "ModuleNotFoundError: No module named 'a_module_nobody_has'"),
    ("tailor_test_metrics:missing", "metric plug-in 'tailor_test_metrics:missing': tailor_test_metrics has no "
                                    "attribute 'missing'"),
    ("tailor_test_metrics:NOT_A_FUNCTION", "NOT_A_FUNCTION is a int, not a function"),
    ("tailor_test_metrics:broken", "metric plug-in 'tailor_test_metrics:broken' raised KeyError: 'boxes'"),
    ("tailor_test_metrics:wrong_type", "metric plug-in 'tailor_test_metrics:wrong_type' returned dict; expected"),
    ("tailor_test_metrics:changed", "metric plug-in 'tailor_test_metrics:changed' raised TypeError: "
                                    "'NoneType' object is not subscriptable"),
    (":f", "metric ':f' is not module:function"),
])
def test_plugin_failures_name_the_plugin_and_the_cause(plugin, name, message, digits, digits_data):
    with pytest.raises(MetricError) as error:
        accuracy.evaluate(digits, digits_data.subset(range(20)), name)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
