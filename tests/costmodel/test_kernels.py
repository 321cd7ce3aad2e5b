"""How a measured target's kernels are grouped, classified and described: what cpu-ort's profiler showed."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnx_tailor.costmodel import load_target
from onnx_tailor.costmodel.features import FEATURE_NAMES, kernel_rows, valid_window
from onnx_tailor.costmodel.kernels import group_kernels, kernel_kind
from onnx_tailor.costmodel.sweep import FLAT_HEIGHTS, SPELLED_ACTIVATIONS, SweepEntry, flat_entries
from onnx_tailor.ir import Model
from tests.graphs import GraphBuilder

CPU = load_target("cpu-ort")


def test_a_depthwise_conv_between_two_ops_is_depthwise_though_its_input_shape_is_not_declared():
    """The sweep's in-network entries: the conv reads a Neg's output, which no value_info declares."""
    entry = SweepEntry.make("depthwise", c=24, k=3, s=1, hw=20, act="relu", ctx=1)
    model = entry.model()
    op = model.node("op")
    assert model.channels(op.input[0]) is None  # what made it a grouped conv before
    assert kernel_kind(model, op) == "depthwise"
    grouped = SweepEntry.make("conv", ci=24, co=24, k=3, s=1, hw=20, act="none", ctx=1).model()
    assert kernel_kind(grouped, grouped.node("op")) == "conv"


def _hardswish_model(spelling: str) -> Model:
    b = GraphBuilder()
    h = b.conv("x", 8, 8, 1, name="conv")
    if spelling == "ops":
        h = b.hardswish_decomposed(h)
    elif spelling == "gate":  # x * HardSigmoid(x)
        h = b.node("Mul", [h, b.node("HardSigmoid", [h], alpha=1 / 6, beta=0.5)])
    else:
        h = b.node("HardSwish", [h], name="hs")
    return Model(b.build({"x": (1, 8, 6, 6)}, [b.conv(h, 8, 8, 1, name="after")]))


def test_a_hardswish_op_fuses_into_the_conv_but_its_spelled_out_form_runs_as_one_kernel_of_its_own():
    """onnxruntime fuses a HardSwish op (and x * HardSigmoid(x)) into the conv before it; Add/Clip/Mul/Div
    it runs outside the blocked layout, which `grouped_activations` makes one kernel (with its reorders)."""
    assert "HardSwish" in CPU.fusable_activations and "hardswish" in CPU.grouped_activations
    for spelling, fused in (("op", ("HardSwish",)), ("gate", ("HardSigmoid", "Mul"))):
        op = {k.name: k for k in group_kernels(_hardswish_model(spelling), CPU.fusable_activations,
                                               CPU.grouped_activations)}
        assert op["conv"].fused == fused and len(op) == 2
    spelled = group_kernels(_hardswish_model("ops"), CPU.fusable_activations, CPU.grouped_activations)
    assert [(k.op_type, k.fused) for k in spelled] == [("Conv", ()), ("Add", ("Clip", "Mul", "Div")), ("Conv", ())]
    assert spelled[1].kind == "elementwise" and len(spelled[1].inputs) == 1  # x is read twice, counted once
    # without grouping each op is a kernel, and the op form does not fuse where only the kind is listed
    assert len(group_kernels(_hardswish_model("ops"), CPU.fusable_activations)) == 2 + 4
    assert len(group_kernels(_hardswish_model("op"), ("hardsigmoid",))) == 3


@pytest.mark.parametrize("kind", SPELLED_ACTIVATIONS)
def test_each_spelled_activation_of_the_sweep_is_one_kernel_named_op_between_convs(kind):
    entry = SweepEntry.make("eltwise", c=16, hw=8, kind=kind, ctx=1)
    kernels = [k for k in group_kernels(entry.model(), CPU.fusable_activations, CPU.grouped_activations)
               if k.kind != "free"]
    op = next(k for k in kernels if k.name == "op")
    assert len(op.fused) == {"hardswish_ops": 3, "hardswish_ops3": 2, "swish_ops": 1}[kind]
    network = entry.network()
    assert {n.op_type for n in network.graph.node if n.name.startswith("ctx_")} == {"Conv"}


def test_valid_window_counts_the_taps_that_read_the_input_not_its_padding():
    b = GraphBuilder()
    flat = b.conv("x", 8, 8, 5, name="flat")  # 5x5, pads 2, on 3 rows: 3 of 5 rows read the input
    model = Model(b.build({"x": (1, 8, 3, 40)}, [flat]))
    rows = [sum(1 for t in range(5) if 0 <= o - 2 + t < 3) for o in range(3)]
    cols = [sum(1 for t in range(5) if 0 <= o - 2 + t < 40) for o in range(40)]
    expected = sum(rows) / 15 * sum(cols) / 200
    assert valid_window(model, model.node("flat"), model.tensor_info) == pytest.approx(expected)
    assert expected == pytest.approx(0.6 * 0.97)  # each edge column loses 2 + 1 of its 5 taps
    b = GraphBuilder()
    one = b.conv("x", 8, 8, 1, name="one")
    model = Model(b.build({"x": (1, 8, 3, 40)}, [one]))
    assert valid_window(model, model.node("one"), model.tensor_info) == 1.0


@pytest.mark.parametrize("auto_pad,pads", [("SAME_UPPER", [1, 1, 2, 2]), ("SAME_LOWER", [2, 2, 1, 1])])
def test_valid_window_reads_auto_pad_as_the_explicit_pads_it_stands_for(auto_pad, pads):
    """SAME_* pads 4x4 stride-2 windows over a 5x7 map by 3 rows and 3 columns: the odd pixel at the end
    (UPPER) or the beginning (LOWER); conv and pool alike."""
    weight = np.ones((8, 8, 4, 4), np.float32)
    for op, extra in (("Conv", {}), ("MaxPool", {"kernel_shape": [4, 4]})):
        shares = []
        for padding in ({"auto_pad": auto_pad}, {"pads": pads}):
            b = GraphBuilder()
            inputs = ["x", b.const(weight)] if op == "Conv" else ["x"]
            y = b.node(op, inputs, name="window", strides=[2, 2], **extra, **padding)
            model = Model(b.build({"x": (1, 8, 5, 7)}, [y]))
            shares.append(valid_window(model, model.node("window"), model.tensor_info))
        assert shares[0] == pytest.approx(shares[1]) and shares[0] < 1.0


def test_channel_alignment_to_the_vector_width_is_a_feature():
    b = GraphBuilder()
    h = b.conv("x", 16, 24, 1, name="aligned")
    h = b.conv(h, 24, 20, 1, name="unaligned")
    model = Model(b.build({"x": (1, 16, 8, 8)}, [h]))
    rows = {r.kernel.name: dict(zip(FEATURE_NAMES, r.features)) for r in kernel_rows(model, CPU)}
    assert CPU.vector_lanes == 8
    assert (rows["aligned"]["in_aligned"], rows["aligned"]["out_aligned"]) == (1.0, 1.0)
    assert (rows["unaligned"]["in_aligned"], rows["unaligned"]["out_aligned"]) == (1.0, 0.0)


def test_text_line_entries_are_wider_than_high():
    entries = flat_entries(size=24)
    assert {e.op for e in entries} == {"conv", "depthwise", "eltwise", "pool"}
    for entry in entries[::3]:
        assert SweepEntry.from_id(entry.id) == entry
        dims = [d.dim_value for d in entry.build().graph.input[0].type.tensor_type.shape.dim]
        assert dims[2:] == [entry.p["hw"], entry.p["w"]] and dims[3] > dims[2]
    assert {e.p["hw"] for e in entries} <= set(FLAT_HEIGHTS)


@pytest.mark.parametrize("shape, axis, opset, expected", [
    ((1, 16, 8400), 1, 17, (8400, 1)),
    ((1, 16, 4, 2100), 1, 17, (8400, 2)),  # yolov8n's distribution head: onnxruntime transposes it twice
    ((1, 16, 4, 2100), -1, 17, (0, 0)),
    ((196, 1000), 1, 17, (0, 0)),
    ((1, 16, 4, 2100), 1, 11, (0, 0)),  # before opset 13 the axis flattens the rest into contiguous rows
])
def test_a_softmax_over_a_middle_axis_is_described_by_what_follows_it(shape, axis, opset, expected):
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], name="op", axis=axis)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    row = dict(zip(FEATURE_NAMES, kernel_rows(model, CPU)[0].features))
    assert (row["log_softmax_inner"], row["softmax_inner_axes"]) == pytest.approx((np.log1p(expected[0]),
                                                                                  expected[1]))


@pytest.mark.parametrize("op, attributes, expected", [
    ("Resize", {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, 1.0),
    ("Resize", {"mode": "nearest"}, 0.0),  # ONNX's default half_pixel: computed per output pixel
    ("Resize", {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, 0.0),
    ("Upsample", {"mode": "nearest"}, 1.0),
])
def test_a_nearest_upsample_that_copies_whole_pixels_is_told_apart(op, attributes, expected):
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    inputs = ["x", "", "scales"] if op == "Resize" else ["x", "scales"]
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], name="op", **attributes)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [scales])
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17 if op == "Resize" else 9)]))
    assert dict(zip(FEATURE_NAMES, kernel_rows(model, CPU)[0].features))["repeats_pixels"] == expected


@pytest.mark.parametrize("op, second, expected", [
    ("Mul", [1, 8, 1, 1], (2.0, 1.0)),  # a squeeze-excitation gate's Mul
    ("Add", [1, 8, 4, 4], (2.0, 0.0)),  # a residual Add
    ("Relu", None, (1.0, 0.0)),
])
def test_an_element_wise_kernel_says_how_many_activations_it_reads_and_whether_one_is_broadcast(op, second,
                                                                                                expected):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])]
    if second:
        inputs.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, second))
    node = helper.make_node(op, [i.name for i in inputs], ["y"], name="op")
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])])
    model = Model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    row = dict(zip(FEATURE_NAMES, kernel_rows(model, CPU)[0].features))
    assert (row["activation_inputs"], row["broadcast_input"]) == expected
