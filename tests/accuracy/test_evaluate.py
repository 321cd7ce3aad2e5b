"""Running models: batching, fixed batch sizes, the reference cache, and comparing two models."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_tailor import accuracy
from onnx_tailor.errors import MetricError
from onnx_tailor.ir import Model, run
from tests.graphs import GraphBuilder, tiny_mobilenet

from .conftest import perturb


@pytest.fixture(scope="module")
def tiny() -> Model:
    return Model(onnx.shape_inference.infer_shapes(tiny_mobilenet()))


@pytest.fixture(scope="module")
def tiny_data(tiny) -> accuracy.Dataset:
    return accuracy.load_data("random", tiny, samples=70)


def test_batched_outputs_equal_one_run_over_everything(tiny, tiny_data):
    batched = accuracy.Evaluator(batch_size=16).run(tiny, tiny_data)
    whole = run(tiny, dict(tiny_data.inputs))
    assert list(batched) == list(whole)
    for name in whole:
        np.testing.assert_allclose(batched[name], whole[name], rtol=1e-5, atol=1e-6)


def test_the_original_runs_once_however_many_variants_it_judges(tiny, tiny_data):
    evaluator = accuracy.Evaluator()
    variants = [perturb(tiny, noise, seed) for seed, noise in enumerate((0.05, 0.1, 0.2))]
    scores = [evaluator.score(v, tiny_data, "agreement", reference=tiny) for v in variants]
    assert evaluator.runs == 1 + len(variants)
    assert evaluator.score(tiny, tiny_data, "cosine", reference=tiny).value == pytest.approx(1.0)
    assert evaluator.runs == 1 + len(variants)  # the original against itself: from the cache
    assert all(s.n == 70 for s in scores)


def test_the_cache_keeps_only_the_most_recent_originals(tiny, tiny_data):
    evaluator = accuracy.Evaluator(cache_size=1)
    other = perturb(tiny, 0.1)
    evaluator.reference_outputs(tiny, tiny_data)
    evaluator.reference_outputs(other, tiny_data)
    evaluator.reference_outputs(other, tiny_data)
    assert evaluator.runs == 2
    evaluator.reference_outputs(tiny, tiny_data)  # pushed out by `other`
    assert evaluator.runs == 3


def test_other_data_is_another_cache_entry(tiny, tiny_data):
    evaluator = accuracy.Evaluator()
    evaluator.reference_outputs(tiny, tiny_data)
    evaluator.reference_outputs(tiny, tiny_data.subset(range(10)))
    assert evaluator.runs == 2


def test_a_fixed_batch_model_gets_full_batches_and_the_last_one_padded():
    b = GraphBuilder(seed=3)
    pooled = b.node("Flatten", [b.node("GlobalAveragePool", [b.conv("x", 3, 5, 3)])], axis=1)
    fixed = Model(b.build({"x": (4, 3, 8, 8)}, [pooled]))  # takes exactly 4 samples a run
    data = accuracy.Dataset({"x": np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)})
    outputs = accuracy.Evaluator(batch_size=64).run(fixed, data)  # 64 ignored: the model takes 4 at a time
    y = next(iter(outputs.values()))
    assert y.shape == (10, 5)
    # Each sample alone (repeated to fill the batch): padding must not leak into other rows.
    one_by_one = [run(fixed, {"x": np.repeat(data.inputs["x"][i:i + 1], 4, axis=0)}) for i in range(10)]
    expected = np.stack([next(iter(o.values()))[0] for o in one_by_one])
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_a_model_whose_outputs_ignore_the_batch_runs_one_sample_at_a_time():
    """It declares a batch axis, but its output does not grow with it: each sample gets a run of its own."""
    node = helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, [])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    outputs = accuracy.Evaluator().run(Model(proto), accuracy.Dataset({"x": x}))
    np.testing.assert_allclose(outputs["m"], x.mean(axis=1), rtol=1e-6)
    with pytest.raises(MetricError, match=r"output 'm' has shape \[\] for a batch of 1: metrics need one row"):
        accuracy.Evaluator().run(Model(proto), accuracy.Dataset({"x": x[:1]}))


def test_an_output_without_a_batch_axis_beside_batched_ones_is_left_to_the_others():
    """A recurrent model's final state ([layers, 1, hidden] whatever the batch) has no row per sample."""
    per_sample = helper.make_node("Relu", ["x"], ["y"])
    state = helper.make_node("ReduceMean", ["x"], ["h"], axes=[0], keepdims=1)
    graph = helper.make_graph([per_sample, state], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
                               helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model, evaluator = Model(proto), accuracy.Evaluator()
    data = accuracy.Dataset({"x": np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)})
    assert list(evaluator.run(model, data)) == ["y"]
    assert evaluator.score(model, data, "cosine", reference=model).value == pytest.approx(1.0)
    with pytest.raises(MetricError, match="output 'h' has no batch axis"):
        evaluator.score(model, data, "cosine", reference=model, output="h")


def test_optimization_level_is_a_parameter(tiny, tiny_data):
    plain = accuracy.Evaluator().run(tiny, tiny_data)
    optimized = accuracy.Evaluator(optimization=ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(tiny, tiny_data)
    for name in plain:
        np.testing.assert_allclose(optimized[name], plain[name], rtol=1e-4, atol=1e-5)


def test_compare_scores_both_and_b_against_a(digits, digits_data, noisy_digits):
    data = digits_data.subset(range(120))
    result = accuracy.compare(digits, noisy_digits, data)
    assert result.n == 120 and result.a.name == result.b.name == "top1"
    assert result.a.value == accuracy.evaluate(digits, data, "top1").value
    assert list(result.fidelity) == ["agreement", "cosine", "sqnr"]
    assert result.fidelity["agreement"].value < 100 and result.fidelity["cosine"].value < 1
    assert result.to_dict()["b_vs_a"]["sqnr"]["unit"] == "dB"


def test_a_comparison_as_json_with_each_models_details_and_warnings(digits, digits_data, noisy_digits):
    data = digits_data.subset(range(60))
    result = accuracy.compare(digits, noisy_digits, data)
    report = json.loads(json.dumps(result.to_dict(("a.onnx", "b.onnx"), ({"macs": 7}, {"macs": 8}), budget=1.0)))
    assert list(report) == ["data", "n", "a", "b", "b_vs_a", "warnings"]
    assert report["data"] == str(data) == result.data and report["n"] == 60
    assert report["a"] == {"model": "a.onnx", "metric": result.a.to_dict(), "macs": 7}
    assert report["b"] == {"model": "b.onnx", "metric": result.b.to_dict(), "macs": 8}
    assert list(report["b_vs_a"]) == ["agreement", "cosine", "sqnr"]
    # top1 and agreement are proportions on 60 samples (+-3 points or more), SQNR +-1.9 dB; cosine is within +-0.03
    assert [": ".join(w.split(": ")[:2]) for w in report["warnings"]] == [
        "A: top1", "B: top1", "B against A: agreement", "B against A: sqnr"]
    assert report["warnings"] == result.interval_warnings(1.0)
    assert report["warnings"][0] == "A: " + accuracy.interval_warning(result.a, 1.0)
    assert result.to_dict()["warnings"] == [] and result.to_dict()["a"]["model"] == "A"


def test_a_comparison_without_a_task_metric_warns_of_fidelity_only(tiny, tiny_data):
    result = accuracy.compare(tiny, perturb(tiny, 0.1), tiny_data)
    assert result.to_dict()["a"] == {"model": "A", "metric": None}
    warnings = result.interval_warnings(0.01)
    assert [": ".join(w.split(": ")[:2]) for w in warnings] == ["B against A: agreement", "B against A: sqnr"]
    assert warnings[1] == "B against A: " + accuracy.interval_warning(result.fidelity["sqnr"], 0.01)


def test_compare_without_labels_reports_fidelity_only(tiny, tiny_data):
    result = accuracy.compare(tiny, perturb(tiny, 0.1), tiny_data)
    assert result.a is None and result.b is None and set(result.fidelity) == {"agreement", "cosine", "sqnr"}
    with pytest.raises(MetricError, match="compare always reports agreement, cosine, sqnr of B against A"):
        accuracy.compare(tiny, tiny, tiny_data, "agreement")


def test_a_caller_that_knows_how_outputs_grow_skips_the_two_sample_run(monkeypatch):
    """`batches` answers once what every `run` would otherwise find out with an extra run of two samples;
    given, no such run is made, and the outputs are those the extra run would have led to."""
    node = helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, [])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    ignores = Model(proto)
    grows = Model(helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    evaluator = accuracy.Evaluator()
    assert evaluator.batches(ignores, accuracy.Dataset({"x": x})) is False
    assert evaluator.batches(grows, accuracy.Dataset({"x": x})) is True
    probes = []
    real = accuracy.Evaluator._batches
    monkeypatch.setattr(accuracy.Evaluator, "_batches", lambda *a: probes.append(1) or real(*a))
    found = accuracy.Evaluator().run(ignores, accuracy.Dataset({"x": x}))
    assert probes == [1]
    given = accuracy.Evaluator().run(ignores, accuracy.Dataset({"x": x}), batches=False)
    assert probes == [1]
    np.testing.assert_array_equal(given["m"], found["m"])
    scored = accuracy.Evaluator().score(grows, accuracy.Dataset({"x": x}), "cosine", reference=grows, batches=True)
    assert probes == [1] and scored.value == pytest.approx(1.0)
