"""MACs and parameters of quantized models: the MACs of their float form, weights counted at their int8 size."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_tailor.analysis import analyze, memory_summary
from onnx_tailor.ir import Model
from onnx_tailor.passes.canonicalize import canonicalize
from onnx_tailor.search.constraints import Constraints
from tests.graphs import OPSET
from tests.graphs_beyond_float import conv_net, quantized


@pytest.fixture(scope="module")
def float_and_quantized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantized")
    float_model = conv_net()
    forms = {how: Model(canonicalize(quantized(float_model, how, folder))) for how in ("dynamic", "qdq", "qoperator")}
    return Model(canonicalize(float_model)), forms


@pytest.mark.parametrize("how,ops", [("dynamic", {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}),
                                     ("qdq", {"QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"}),
                                     ("qoperator", {"QLinearConv", "QLinearMatMul"})])
def test_quantized_macs_are_the_float_models(float_and_quantized, how, ops):
    float_model, forms = float_and_quantized
    model = forms[how]
    assert ops <= {n.op_type for n in model.nodes}  # the form onnxruntime's quantizer gives
    expected = analyze(float_model)
    assert expected.macs == 8 * 8 * 16 * 3 * 3 * 3 + 8 * 8 * 8 * 16 + 512 * 10  # conv1, conv2, fc by hand
    assert analyze(model).macs == expected.macs


@pytest.mark.parametrize("how", ["dynamic", "qdq", "qoperator"])
def test_quantized_weights_count_at_one_byte(float_and_quantized, how):
    float_model, forms = float_and_quantized
    model = forms[how]
    report = analyze(model)
    int8 = [t for t in model.graph.initializer if t.data_type in (TensorProto.INT8, TensorProto.UINT8)]
    int8_elements = sum(math.prod(t.dims) for t in int8)
    weights = 16 * 3 * 9 + 8 * 16 + 512 * 10  # every weight of the float model is an int8 constant now
    assert int8_elements >= weights
    assert report.params >= int8_elements
    # the float model's 4-byte weights are single bytes now: the bytes fall to about a quarter
    assert report.param_bytes < analyze(float_model).param_bytes / 3
    assert memory_summary(model).param_bytes == report.param_bytes


def test_max_params_budget_is_in_bytes_of_int8_weights(float_and_quantized):
    float_model, forms = float_and_quantized
    quantized_bytes = memory_summary(forms["qoperator"]).param_bytes
    budget = Constraints(None, max_param_bytes=quantized_bytes)
    assert budget.memory_violation(quantized_bytes, 0) is None
    assert budget.memory_violation(memory_summary(float_model).param_bytes, 0) is not None


def test_qlinearconv_parameters_by_hand():
    # QLinearConv 4 -> 6, 3x3, int8 weights with per-channel scales, an int32 bias;
    # the int64 shape constant of the Reshape after it is not a parameter.
    rng = np.random.default_rng(0)
    consts = {
        "x_scale": np.float32(0.1), "x_zp": np.uint8(128), "w": rng.integers(-127, 127, (6, 4, 3, 3)).astype(np.int8),
        "w_scale": np.full(6, 0.02, np.float32), "w_zp": np.zeros(6, np.int8), "y_scale": np.float32(0.2),
        "y_zp": np.uint8(128), "bias": rng.integers(-100, 100, 6).astype(np.int32), "shape": np.array([1, -1]),
    }
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    nodes = [helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp",
                                              "bias"], ["y"], name="qconv", pads=[1] * 4),
             helper.make_node("Reshape", ["y", "shape"], ["z"], name="flat")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("z", TensorProto.UINT8, [1, 150])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    report = analyze(Model(canonicalize(proto)))
    conv = next(n for n in report.nodes if n.op_type == "QLinearConv")
    assert conv.macs == 5 * 5 * 6 * 4 * 9
    # 216 int8 weights + 6 int8 zero points + 2 uint8 zero points; 6 + 2 float scales; 6 int32 biases
    assert report.params == 216 + 6 + 2 + 6 + 2 + 6
    assert report.param_bytes == 216 + 6 + 2 + 4 * (6 + 2) + 4 * 6


def test_dequantized_weights_are_not_activations(float_and_quantized):
    # QDQ spells each weight as DequantizeLinear(int8 constant): a float view of a parameter, not a
    # tensor the network computes; counting it would make the 512 x 10 classifier weight the peak.
    float_model, forms = float_and_quantized
    assert analyze(forms["qdq"]).peak_activation_bytes <= analyze(float_model).peak_activation_bytes
