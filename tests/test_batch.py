"""ir/batch.py: where each input and output has its batch, and running more samples than one batch.

Every joined result is checked against the model run on each sample alone, with onnxruntime directly
(tests.graphs.tensor_value's way), so that a wrong axis or leaked padding shows as a wrong value.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_tailor import accuracy, zoo
from onnx_tailor.errors import InputShapeError
from onnx_tailor.ir import Model, batch_layout, run_samples, seeded_samples
from onnx_tailor.ir.batch import length_axes
from onnx_tailor.passes.capture import capture
from onnx_tailor.passes.canonicalize import load
from tests.odd_shapes import fixed_batch_convnet, recurrent_step, time_major, two_embeddings


def _alone(model: Model, feeds: dict) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _graph(inputs: dict[str, list]) -> Model:
    """Identity of each float input, with the declared shapes given."""
    nodes = [helper.make_node("Identity", [name], [name + "_out"]) for name in inputs]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
                              [helper.make_tensor_value_info(n + "_out", TensorProto.FLOAT, None) for n in inputs])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return Model(proto)


def test_inputs_batch_axes():
    recurrent = batch_layout(Model(recurrent_step()))
    assert recurrent.inputs == {"x": 0, "state": 1, "sr": None} and recurrent.fixed is None
    fixed = batch_layout(Model(fixed_batch_convnet()))
    assert fixed.inputs == {"x": 0} and fixed.fixed == 1
    assert batch_layout(Model(time_major())).inputs == {"x": 0}
    # A name that is some input's first dynamic dimension and shared is the batch, wherever it sits.
    named = batch_layout(_graph({"x": ["time", "n", 4], "mask": ["n", "time"], "h": [2, "n", 8]}))
    assert named.name == "n" and named.inputs == {"x": 1, "mask": 0, "h": 1}
    # 'seq' never comes first (the batch is unnamed): it is not the batch.
    assert batch_layout(_graph({"a": [None, "seq"], "b": [None, "seq"]})).inputs == {"a": 0, "b": 0}
    # A batch fixed at 1 before dynamic sizes; but a leading 1 where another input shows the batch free is not it.
    detector = batch_layout(_graph({"x": [1, 3, None, None]}))
    assert detector.inputs == {"x": 0} and detector.fixed == 1
    assert batch_layout(_graph({"x": [None, 5, 6], "h": [1, None, 4]})).inputs == {"x": 0, "h": 1}
    # Every input fixed: the leading dimension of the first is the batch; an input without it has none.
    assert batch_layout(_graph({"x": [4, 3], "table": [7, 5]})).inputs == {"x": 0, "table": None}


def test_input_shapes_ask_for_every_dimension_but_the_batch():
    with pytest.raises(InputShapeError, match=r"'x' \[1,3,\?,\?\]; .*--input-shape x=1,3,N,N"):
        _graph({"x": [1, 3, None, None]}).input_shapes
    assert _graph({"x": [None, 5, 6], "h": [2, None, 4]}).input_shapes == {"x": (1, 5, 6), "h": (2, 1, 4)}


def test_length_axes_prefer_dynamic_axes():
    value = np.zeros((2, 2, 5))
    assert length_axes(value, 2, (2, None, 5)) == [1, 0]
    assert length_axes(value, 2, None) == [0, 1]
    assert length_axes(value, 3, None) == []


@pytest.mark.parametrize("batch_size", [1, 2, 3, None])
def test_recurrent_state_and_scalar_rate_join_on_their_own_axes(batch_size):
    model = Model(recurrent_step())
    samples = seeded_samples(model, 5, seed=1)
    assert samples["x"].shape == (5, 5, 6) and samples["state"].shape == (5, 2, 4) and samples["sr"].shape == (5,)
    assert (samples["sr"] == samples["sr"][0]).all()  # one rate, as the model takes one a run
    joined, axes = run_samples(model, samples, batch_size)
    assert axes == {"y": 0, "state_out": 1}
    for i in range(5):
        alone = _alone(model, {"x": samples["x"][i:i + 1], "state": samples["state"][i][:, None],
                               "sr": np.asarray(samples["sr"][0])})
        np.testing.assert_allclose(joined["y"][i:i + 1], alone["y"], rtol=1e-6)
        np.testing.assert_allclose(joined["state_out"][:, i:i + 1], alone["state_out"], rtol=1e-6)


def test_a_time_major_output_is_joined_on_axis_1_and_evaluated_samples_first():
    model = Model(time_major())
    data = accuracy.random_dataset(model, samples=10)
    outputs = accuracy.Evaluator(batch_size=3).run(model, data)  # batches of 3 = T: only inference tells the axis
    assert outputs["y"].shape == (10, 3, 4)
    for i in range(10):
        alone = _alone(model, {"x": data.inputs["x"][i:i + 1]})["y"]  # [T, 1, C]
        np.testing.assert_allclose(outputs["y"][i], alone[:, 0], rtol=1e-6)


def test_capture_feeds_a_fixed_batch_model_one_run_at_a_time():
    model = Model(fixed_batch_convnet())
    calib = accuracy.random_dataset(model, samples=5, seed=2).inputs
    conv = model.node("wide").output[0]
    seen = capture(model, [conv], calib)[conv]
    assert seen.shape == (5, 20, 8, 8)
    for i in range(5):
        expected = capture(model, [conv], {"x": calib["x"][i:i + 1]})[conv]
        np.testing.assert_allclose(seen[i:i + 1], expected, rtol=1e-6)


def test_random_integers_stay_inside_their_tables_through_evaluation():
    model = Model(two_embeddings())
    data = accuracy.random_dataset(model, samples=64)
    assert data.inputs["token_type_ids"].max() <= 1 and data.inputs["input_ids"].max() < 1000
    assert data.inputs["input_ids"].max() > 1  # the vocabulary's range is used, not only the smallest table's
    score = accuracy.evaluate(model, data, "cosine", reference=model)
    assert score.value == pytest.approx(1.0)


@pytest.fixture(scope="module")
def silero():
    found = zoo.fetch("silero_vad")
    if isinstance(found, str):
        pytest.skip(found)
    return load(found["silero_vad"])


def test_silero_vad_state_joins_on_its_batch_axis(silero):
    rng = np.random.default_rng(0)
    n = 6
    data = accuracy.Dataset({"input": rng.standard_normal((n, 512)).astype(np.float32) * 0.1,
                             "state": rng.standard_normal((n, 2, 128)).astype(np.float32) * 0.1,
                             "sr": np.full(n, 16000, np.int64)})
    layout = batch_layout(silero)
    assert layout.inputs == {"input": 0, "state": 1, "sr": None}
    outputs = accuracy.Evaluator(batch_size=2).run(silero, data)  # 2 samples a run: the state's first axis is 2 too
    assert outputs["output"].shape == (n, 1) and outputs["stateN"].shape == (n, 2, 128)
    for i in range(n):
        alone = _alone(silero, {"input": data.inputs["input"][i:i + 1], "state": data.inputs["state"][i][:, None],
                                "sr": np.asarray(16000, np.int64)})
        np.testing.assert_allclose(outputs["output"][i], alone["output"][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outputs["stateN"][i], alone["stateN"][:, 0], rtol=1e-4, atol=1e-5)  # a batched LSTM sums in another order
