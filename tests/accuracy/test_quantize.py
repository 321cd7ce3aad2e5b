"""quantize_qdq: the int8 QDQ model onnxruntime's static quantizer makes, judged like any variant.

On the digits model: the int8 model has QuantizeLinear/DequantizeLinear with
int8 per-channel symmetric weights, keeps the node names, runs, and scores
within measured bounds of fp32; the same call gives the same bytes; the
input model is untouched. On small graphs: an opset-11 model, a fixed batch
size, the percentile method, silence, and the one-line errors.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_tailor import accuracy
from onnx_tailor.errors import DataError, QuantizationError
from onnx_tailor.ir import Model
from tests.graphs import GraphBuilder


@pytest.fixture(scope="module")
def int8_digits(digits, digits_split) -> Model:
    return accuracy.quantize_qdq(digits, digits_split.calibration.inputs)


def small_model(batch: int | str = "batch", opset: int = 17) -> Model:
    """conv -> relu6 -> conv -> global average pool, on 3x8x8 inputs."""
    b = GraphBuilder(seed=1)
    x = b.relu6(b.conv("x", 3, 16, 3, name="conv_a"))  # weights over 1 KiB: what onnx moves to external data
    x = b.node("GlobalAveragePool", [b.conv(x, 16, 4, 1, name="conv_b")], name="pool")
    proto = b.build({"x": (1 if batch == "batch" else batch, 3, 8, 8)}, [x], dynamic_batch=batch == "batch")
    proto.opset_import[0].version = opset
    return Model(proto)


def calibration(samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((samples, 3, 8, 8)).astype(np.float32)}


# -- digits ------------------------------------------------------------------------------


def test_weights_are_int8_per_channel_and_symmetric_behind_dequantize_linear(digits, int8_digits):
    ops = Counter(n.op_type for n in int8_digits.nodes)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    for conv in (n for n in int8_digits.nodes if n.op_type == "Conv"):
        dequantize = int8_digits.producer(conv.input[1])
        assert dequantize.op_type == "DequantizeLinear"
        weight, scale, zero = (int8_digits.constant(name) for name in dequantize.input)
        assert weight.dtype == np.int8 and not zero.any()
        assert scale.shape == (weight.shape[0],)  # one scale per output channel
        assert int8_digits.producer(conv.input[0]).op_type == "DequantizeLinear"  # an int8 activation


def test_node_names_and_graph_inputs_and_outputs_survive(digits, int8_digits):
    original = {n.name: n.op_type for n in digits.nodes}
    quantized = {n.name: n.op_type for n in int8_digits.nodes}
    added = {name for name, op in quantized.items() if name not in original}
    assert all(quantized[name] in ("QuantizeLinear", "DequantizeLinear") for name in added)
    # Relu and Clip are folded into the quantized range of the output before them; every other node stays.
    dropped = Counter(op for name, op in original.items() if name not in quantized)
    assert set(dropped) <= {"Relu", "Clip"}
    assert all(quantized[name] == op for name, op in original.items() if name in quantized)
    assert [i.name for i in int8_digits.graph_inputs] == [i.name for i in digits.graph_inputs]
    assert [o.name for o in int8_digits.graph.output] == [o.name for o in digits.graph.output]


def test_int8_top1_stays_within_a_point_of_fp32(digits, int8_digits, digits_split):
    # Measured: top-1 98.89 % both, agreement 100 %, SQNR 34.7 dB (symmetric activations: 27.4 dB).
    evaluator = accuracy.Evaluator()
    fp32 = evaluator.score(digits, digits_split.evaluation, "top1")
    int8 = evaluator.scores(int8_digits, digits_split.evaluation, ["top1", "agreement", "sqnr"], reference=digits)
    assert int8["top1"].value >= fp32.value - 1.0
    assert int8["agreement"].value >= 98.0
    assert 31.0 < int8["sqnr"].value < 45.0  # quantized (not fp32-exact), and with asymmetric activations


def test_the_same_model_and_data_give_the_same_bytes(digits, int8_digits, digits_split):
    again = accuracy.quantize_qdq(digits, digits_split.calibration.inputs)
    assert again.serialized == int8_digits.serialized


def test_minmax_does_not_depend_on_the_calibration_batch_size(digits, int8_digits, digits_split):
    # 180 samples in batches of 7: a short last batch of 5, on the dynamic batch dimension.
    assert accuracy.quantize_qdq(digits, digits_split.calibration.inputs, batch_size=7).serialized \
        == int8_digits.serialized


@pytest.mark.parametrize("opset", [11, 17])
def test_the_input_model_is_not_modified(opset):
    # onnxruntime's quantize_static, handed a ModelProto, turns its weights into references to deleted files.
    model = small_model(opset=opset)
    before = model.proto.SerializeToString(deterministic=True)
    accuracy.quantize_qdq(model, calibration(10))
    assert model.proto.SerializeToString(deterministic=True) == before


# -- small graphs ------------------------------------------------------------------------


def test_an_opset_11_model_is_raised_to_13_for_per_channel_weights():
    model = small_model(opset=11)
    int8 = accuracy.quantize_qdq(model, calibration(10))
    assert {o.domain: o.version for o in int8.proto.opset_import}[""] == 13
    assert {n.name for n in model.nodes if n.op_type != "Clip"} <= {n.name for n in int8.nodes}
    outputs = accuracy.Evaluator().run(int8, accuracy.Dataset(calibration(5, seed=1)))
    assert next(iter(outputs.values())).shape == (5, 4, 1, 1)


def test_a_fixed_batch_size_gets_full_batches():
    # 10 samples for a model that takes exactly 4: unpadded, the last batch of 2 would fail to run.
    int8 = accuracy.quantize_qdq(small_model(batch=4), calibration(10))
    assert "QuantizeLinear" in {n.op_type for n in int8.nodes}


def test_percentile_runs_on_a_sample_count_no_batch_size_divides_and_prints_nothing(capfd, caplog):
    int8 = accuracy.quantize_qdq(small_model(), calibration(11), method="percentile", batch_size=4)
    assert "QuantizeLinear" in {n.op_type for n in int8.nodes}
    assert capfd.readouterr() == ("", "")  # onnxruntime's histogram calibrators print
    assert not caplog.records  # and its quantizer advises pre-processing on the root logger


def test_the_root_logger_gets_no_handler(monkeypatch):
    # onnxruntime logs with logging.warning(), which would configure an unconfigured root logger.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    accuracy.quantize_qdq(small_model(), calibration(4))
    assert logging.getLogger().handlers == []


# -- errors ------------------------------------------------------------------------------


def test_calibration_data_for_another_input_is_a_one_line_error():
    with pytest.raises(DataError, match=r"calibration data: no array for model input 'x'") as caught:
        accuracy.quantize_qdq(small_model(), {"input": calibration(4)["x"]})
    assert "\n" not in str(caught.value)


def test_an_unknown_method_is_a_one_line_error():
    with pytest.raises(QuantizationError, match="unknown calibration method 'entropy'; choose one of minmax"):
        accuracy.quantize_qdq(small_model(), calibration(4), method="entropy")


def test_a_model_onnxruntime_cannot_quantize_is_a_one_line_error():
    weight = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Unheard", ["c"], ["y"], name="custom", domain="example.custom")],
        "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("example.custom", 1)])
    proto.ir_version = 8
    with pytest.raises(QuantizationError, match="onnxruntime cannot quantize the model: .*Unheard") as caught:
        accuracy.quantize_qdq(Model(proto), calibration(4))
    assert "\n" not in str(caught.value)


def test_an_already_quantized_model_is_judged_as_it_is(digits, int8_digits, digits_split):
    """Quantizing a QDQ model again quantizes its quantizers (onnxruntime then cannot load its own output)."""
    assert accuracy.is_quantized_model(int8_digits) and not accuracy.is_quantized_model(digits)
    again = accuracy.quantize_qdq(int8_digits, digits_split.calibration.inputs)
    assert again.content_hash == int8_digits.content_hash
