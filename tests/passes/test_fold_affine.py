"""fold_affine: each exporter spelling of a constant scale/shift folds, exactly, where it may; the rest stays.

Every case builds a small graph, folds it, and runs both with onnxruntime at
ORT_DISABLE_ALL (`check_equivalence`) to 1e-5 relative; the op types left
are the docstring's promise.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_tailor.ir import Model, check_equivalence, read_proto
from onnx_tailor.passes.canonicalize import CANONICAL_STEPS, canonicalize
from onnx_tailor.passes.fold_affine import fold_all_affine
from tests.graphs import OPSET, GraphBuilder

RTOL = 1e-5


def op_types(proto: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in proto.graph.node]


def folded(proto: onnx.ModelProto, expected: list[str]) -> onnx.ModelProto:
    """Fold `proto`, check the ops left and the outputs against the original, and that `proto` is untouched."""
    before = proto.SerializeToString(deterministic=True)
    result = fold_all_affine(proto)
    assert op_types(result) == expected
    comparison = check_equivalence(Model(proto), Model(result), rtol=RTOL)
    assert comparison, comparison.detail
    assert proto.SerializeToString(deterministic=True) == before, "the input proto must not change"
    return result


def channel_values(b: GraphBuilder, channels: int, shape: tuple, low: float = 0.5, high: float = 2.0) -> str:
    return b.const(b.rng.uniform(low, high, channels).astype(np.float32).reshape(shape))


def scalar(b: GraphBuilder, value: float) -> str:
    return b.const(np.float32(value))


# -- after a layer --------------------------------------------------------------------------


def test_per_channel_mul_and_add_after_a_conv_fold_into_it():
    b = GraphBuilder(seed=1)
    y = b.node("Mul", [b.conv("x", 3, 4, 3), channel_values(b, 4, (1, 4, 1, 1))])
    y = b.node("Add", [channel_values(b, 4, (4, 1, 1), -1, 1), y])  # constant first: still an Add of x
    folded(b.build({"x": (1, 3, 6, 6)}, [b.node("Relu", [y])]), ["Conv", "Relu"])


def test_sub_and_div_after_a_conv_fold_and_a_reversed_sub_negates():
    b = GraphBuilder(seed=2)
    y = b.node("Sub", [b.conv("x", 3, 4, 3, bias=False), channel_values(b, 4, (1, 4, 1, 1))])
    y = b.node("Div", [y, channel_values(b, 4, (4, 1, 1))])
    y = b.node("Sub", [scalar(b, 0.25), y])
    folded(b.build({"x": (1, 3, 6, 6)}, [b.node("Relu", [y])]), ["Conv", "Relu"])


def test_learnable_affine_blocks_around_an_activation_fold_into_both_convs():
    """PP-LCNetV3 / MobileOne: Conv -> Mul(a) -> Add(b) -> act -> Mul(c) -> Add(d) -> Conv 1x1."""
    b = GraphBuilder(seed=3)
    y = b.node("Add", [b.node("Mul", [b.conv("x", 3, 8, 3), scalar(b, 1.3)]), scalar(b, -0.2)])
    y = b.node("Add", [b.node("Mul", [b.node("Relu", [y]), scalar(b, 0.7)]), scalar(b, 0.4)])
    folded(b.build({"x": (1, 3, 6, 6)}, [b.conv(y, 8, 4, 1)]), ["Conv", "Relu", "Conv"])


def test_a_batchnorm_after_an_add_after_a_conv_transpose_folds():
    """The PaddleOCR detector's head: ConvTranspose -> Add(bias) -> BatchNormalization -> Relu."""
    b = GraphBuilder(seed=4)
    weight = b.const(b.rng.standard_normal((4, 3, 2, 2)).astype(np.float32) * 0.3, "w")
    y = b.node("ConvTranspose", ["x", weight], strides=[2, 2], group=2)
    y = b.batchnorm(b.node("Add", [y, channel_values(b, 6, (1, 6, 1, 1), -1, 1)]), 6)
    folded(b.build({"x": (1, 4, 5, 5)}, [b.node("Relu", [y])]), ["ConvTranspose", "Relu"])


def test_scale_and_shift_after_a_gemm_fold_into_weights_and_bias():
    b = GraphBuilder(seed=5)
    y = b.node("Gemm", ["x", b.const(b.rng.standard_normal((6, 5)).astype(np.float32), "w")], transB=1, alpha=0.5)
    y = b.node("Add", [b.node("Mul", [y, channel_values(b, 6, (1, 6))]), channel_values(b, 6, (6,), -1, 1)])
    folded(b.build({"x": (2, 5)}, [y]), ["Gemm"])


def test_after_a_matmul_the_scale_folds_and_the_shift_stays_as_one_add():
    b = GraphBuilder(seed=6)
    y = b.node("MatMul", ["x", b.const(b.rng.standard_normal((5, 6)).astype(np.float32), "w")])
    y = b.node("Mul", [b.node("Add", [y, channel_values(b, 6, (6,), -1, 1)]), scalar(b, 2.0)])
    folded(b.build({"x": (2, 3, 5)}, [y]), ["MatMul", "Add"])


# -- before a layer ---------------------------------------------------------------------------


def test_a_scale_before_a_1x1_conv_folds_into_its_input_channels():
    b = GraphBuilder(seed=7)
    y = b.node("Mul", [b.node("Relu", ["x"]), channel_values(b, 6, (1, 6, 1, 1))])
    folded(b.build({"x": (1, 6, 5, 5)}, [b.conv(y, 6, 4, 1)]), ["Relu", "Conv"])


def test_div_and_sub_before_an_unpadded_grouped_conv_fold_completely():
    b = GraphBuilder(seed=8)
    y = b.node("Sub", [b.node("Div", [b.node("Relu", ["x"]), channel_values(b, 6, (6, 1, 1))]),
                      channel_values(b, 6, (1, 6, 1, 1), -1, 1)])
    weight = b.const(b.rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    conv = b.node("Conv", [y, weight, b.const(np.ones(4, np.float32))], kernel_shape=[3, 3], group=2)
    folded(b.build({"x": (1, 6, 7, 7)}, [conv]), ["Relu", "Conv"])


def test_before_a_padded_conv_only_the_scale_folds_and_the_shift_stays():
    """Zero padding of x * s + t is not x * s + t at the borders: the shift stays, as one Add(t / s)."""
    b = GraphBuilder(seed=9)
    y = b.node("Add", [b.node("Mul", [b.node("Relu", ["x"]), scalar(b, 0.8)]), scalar(b, 0.3)])
    result = folded(b.build({"x": (1, 4, 6, 6)}, [b.conv(y, 4, 4, 3, group=4)]), ["Relu", "Add", "Conv"])
    shift = next(n for n in result.graph.node if n.op_type == "Add")
    kept = {t.name: onnx.numpy_helper.to_array(t) for t in result.graph.initializer}[shift.input[1]]
    assert kept.shape == () and np.isclose(kept, 0.3 / 0.8), "a scalar shift stays a scalar"


def test_a_shift_alone_before_a_padded_conv_stays():
    b = GraphBuilder(seed=10)
    y = b.node("Add", [b.node("Relu", ["x"]), channel_values(b, 4, (1, 4, 1, 1))])
    proto = b.build({"x": (1, 4, 6, 6)}, [b.conv(y, 4, 4, 3)])
    assert fold_all_affine(proto) is proto


@pytest.mark.parametrize("auto_pad, kernel, expected", [
    ("SAME_UPPER", 1, ["Relu", "Conv"]),  # a one-pixel SAME window pads nothing: the shift folds
    ("VALID", 3, ["Relu", "Conv"]),
    ("SAME_LOWER", 3, ["Relu", "Add", "Conv"]),  # reads padding at the borders: the shift stays
])
def test_a_shift_before_an_auto_padded_conv_folds_where_no_padding_is_read(auto_pad, kernel, expected):
    b = GraphBuilder(seed=12)
    y = b.node("Add", [b.node("Relu", ["x"]), channel_values(b, 4, (1, 4, 1, 1), -1, 1)])
    weight = b.const(b.rng.standard_normal((3, 4, kernel, kernel)).astype(np.float32), "w")
    conv = b.node("Conv", [y, weight, b.const(np.ones(3, np.float32))], kernel_shape=[kernel, kernel],
                  auto_pad=auto_pad)
    folded(b.build({"x": (1, 4, 6, 6)}, [conv]), expected)


def test_a_scale_and_shift_before_a_gemm_fold_and_before_a_matmul_the_shift_stays():
    b = GraphBuilder(seed=11)
    y = b.node("Add", [b.node("Mul", [b.node("Relu", ["x"]), channel_values(b, 5, (5,))]),
                       channel_values(b, 5, (1, 5), -1, 1)])
    gemm = b.node("Gemm", [y, b.const(b.rng.standard_normal((5, 3)).astype(np.float32), "w"),
                           b.const(np.ones(3, np.float32))], beta=0.5)
    folded(b.build({"x": (2, 5)}, [gemm]), ["Relu", "Gemm"])

    b = GraphBuilder(seed=12)
    y = b.node("Add", [b.node("Mul", [b.node("Relu", ["x"]), channel_values(b, 5, (5,))]), scalar(b, 0.5)])
    matmul = b.node("MatMul", [y, b.const(b.rng.standard_normal((5, 3)).astype(np.float32), "w")])
    folded(b.build({"x": (2, 4, 5)}, [matmul]), ["Relu", "Add", "MatMul"])


# -- what must stay ---------------------------------------------------------------------------


def test_a_constant_that_is_not_per_channel_stays():
    """[W] against NCHW broadcasts along the width, not the channels."""
    b = GraphBuilder(seed=13)
    y = b.node("Mul", [b.conv("x", 3, 4, 1), b.const(np.arange(1, 7, dtype=np.float32))])
    proto = b.build({"x": (1, 3, 6, 6)}, [b.node("Relu", [y])])
    assert fold_all_affine(proto) is proto


def test_a_conv_output_with_another_reader_keeps_its_affine():
    b = GraphBuilder(seed=14)
    conv = b.conv("x", 3, 4, 1)
    scaled = b.node("Mul", [conv, channel_values(b, 4, (1, 4, 1, 1))])
    proto = b.build({"x": (1, 3, 6, 6)}, [b.node("Add", [scaled, conv])])
    assert fold_all_affine(proto) is proto


def test_an_affine_whose_output_has_other_readers_is_not_folded_into_the_conv_after_it():
    b = GraphBuilder(seed=15)
    scaled = b.node("Mul", [b.node("Relu", ["x"]), channel_values(b, 4, (1, 4, 1, 1))])
    proto = b.build({"x": (1, 4, 6, 6)}, [b.conv(scaled, 4, 4, 1), b.node("Sigmoid", [scaled])])
    assert fold_all_affine(proto) is proto


def test_a_scale_that_broadcasts_the_tensor_to_more_channels_stays():
    b = GraphBuilder(seed=20)
    y = b.node("Mul", [b.node("Relu", ["x"]), channel_values(b, 4, (1, 4, 1, 1))])  # [1, 1, 5, 5] -> [1, 4, 5, 5]
    proto = b.build({"x": (1, 1, 5, 5)}, [b.conv(y, 4, 2, 1)])
    assert fold_all_affine(proto) is proto


def test_a_division_of_a_constant_by_the_tensor_and_shared_weights_stay():
    b = GraphBuilder(seed=16)
    y = b.node("Div", [scalar(b, 1.0), b.conv("x", 3, 4, 1)])
    proto = b.build({"x": (1, 3, 6, 6)}, [y])
    assert fold_all_affine(proto) is proto

    b = GraphBuilder(seed=17)
    weight = b.const(b.rng.standard_normal((3, 3, 1, 1)).astype(np.float32), "w")
    first = b.node("Conv", ["x", weight])
    second = b.node("Conv", [b.node("Mul", [first, scalar(b, 2.0)]), weight])
    proto = b.build({"x": (1, 3, 4, 4)}, [second])
    assert op_types(fold_all_affine(proto)) == ["Conv", "Mul", "Conv"], "folding would copy the shared weight"


def test_float16_weights_fold_in_float16():
    b = GraphBuilder(seed=18)
    y = b.node("Mul", [b.conv("x", 3, 4, 3), channel_values(b, 4, (1, 4, 1, 1))])
    proto = _as_float16(b.build({"x": (1, 3, 6, 6)}, [b.node("Relu", [y])]))
    result = fold_all_affine(proto)
    assert op_types(result) == ["Conv", "Relu"]
    assert {t.data_type for t in result.graph.initializer} == {TensorProto.FLOAT16}
    # float16 keeps 11 significant bits: the folded weights round once more than the original's product
    assert check_equivalence(Model(proto), Model(result), rtol=2 ** -9)


def _as_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for tensor in out.graph.initializer:
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor).astype(np.float16),
                                                     tensor.name))
    for info in list(out.graph.input) + list(out.graph.output) + list(out.graph.value_info):
        info.type.tensor_type.elem_type = TensorProto.FLOAT16
    return out


# -- inside canonicalization and on a real export -----------------------------------------------


def test_canonicalization_folds_the_affine_runs_onnxruntime_leaves():
    b = GraphBuilder(seed=19)
    y = b.node("Add", [b.node("Mul", [b.conv("x", 3, 8, 3), scalar(b, 1.3)]), scalar(b, -0.2)])
    y = b.node("Add", [b.node("Mul", [b.node("Relu", [y]), scalar(b, 0.7)]), scalar(b, 0.4)])
    proto = b.build({"x": (1, 3, 6, 6)}, [b.conv(y, 8, 4, 1)])
    canonical = canonicalize(proto)
    assert op_types(canonical) == ["Conv", "Relu", "Conv"]
    assert check_equivalence(Model(proto), Model(canonical), rtol=RTOL)


def test_a_batchnorm_after_a_bias_add_folds_with_it():
    """Conv -> Add(bias) -> BatchNormalization: fold_batchnorm sees no Conv before it; the affine fold takes both."""
    b = GraphBuilder(seed=21)
    y = b.batchnorm(b.node("Add", [b.conv("x", 3, 4, 3, bias=False), channel_values(b, 4, (1, 4, 1, 1), -1, 1)]), 4)
    proto = b.build({"x": (1, 3, 6, 6)}, [b.node("Relu", [y])])
    canonical = canonicalize(proto)
    assert op_types(canonical) == ["Conv", "Relu"]
    assert check_equivalence(Model(proto), Model(canonical), rtol=RTOL)


def test_the_paddle_detector_loses_what_onnxsim_removes(paddle_models):
    """Its head spells ConvTranspose -> Add(bias) -> BatchNormalization and ConvTranspose -> Add(bias):
    the BatchNormalization and both Adds fold into the ConvTransposes (onnxsim removes the same three)."""
    raw = read_proto(paddle_models["paddle_det"])
    without = canonicalize(raw, steps=tuple(s for s in CANONICAL_STEPS if s is not fold_all_affine))
    canonical = canonicalize(raw)
    removed = Counter(op_types(without)) - Counter(op_types(canonical))
    assert removed["BatchNormalization"] == 1 and removed["Add"] == 2
    assert "BatchNormalization" not in op_types(canonical)
    model = Model(canonical, {"x": (1, 3, 96, 96)})
    for layer in (n for n in model.nodes if n.op_type == "ConvTranspose"):
        assert [r.op_type for r in model.consumers(layer.output[0])] in (["Relu"], ["Sigmoid"])
    assert removed.keys() <= {"BatchNormalization", "Add", "Div"}, f"only affine ops go: {removed}"
    assert check_equivalence(Model(raw, {"x": (1, 3, 96, 96)}), model, rtol=RTOL)


@pytest.mark.parametrize("name", ["paddle_cls", "paddle_det"])
def test_canonical_form_is_a_fixed_point(paddle_models, name):
    canonical = canonicalize(read_proto(paddle_models[name]))
    again = canonicalize(canonical)
    assert again.SerializeToString(deterministic=True) == canonical.SerializeToString(deterministic=True)


def test_a_graph_with_nothing_to_fold_comes_back_as_it_was():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    assert fold_all_affine(proto) is proto
