"""Test models past a plain float feed-forward graph: quantized (by onnxruntime's own quantizer),
recurrent (LSTM/GRU/RNN) and control flow (If, Loop), with known MACs.

Like `tests.graphs`, each builder returns a checked `onnx.ModelProto` with seeded weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

from tests.graphs import OPSET, GraphBuilder

CONV_NET_INPUT = (1, 3, 8, 8)


def conv_net() -> onnx.ModelProto:
    """Conv 3x3 (3->16) -> Relu -> Conv 1x1 (16->8) -> Flatten -> MatMul (512->10), on 1x3x8x8."""
    b = GraphBuilder()
    y = b.node("Relu", [b.conv("x", 3, 16, 3, name="conv1")])
    y = b.node("Flatten", [b.conv(y, 16, 8, 1, name="conv2")], axis=1)
    y = b.node("MatMul", [y, b.const(b.rng.standard_normal((8 * 8 * 8, 10)).astype(np.float32), "fc")], name="fc")
    return b.build({"x": CONV_NET_INPUT}, [y])


class _Calibration(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.batches = iter([{"x": rng.standard_normal(CONV_NET_INPUT).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


def quantized(model: onnx.ModelProto, how: str, folder: Path) -> onnx.ModelProto:
    """`model` quantized by onnxruntime: `dynamic` (ConvInteger, MatMulInteger), `qdq`
    (Quantize/DequantizeLinear around float Conv and MatMul) or `qoperator` (QLinearConv, QLinearMatMul)."""
    source, target = folder / "float.onnx", folder / f"{how}.onnx"
    onnx.save(model, source)
    if how == "dynamic":
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    else:
        quantize_static(source, target, _Calibration(),
                        quant_format=QuantFormat.QDQ if how == "qdq" else QuantFormat.QOperator)
    return onnx.load(target)


def recurrent(op: str = "LSTM", steps: int = 5, batch: int = 2, inputs: int = 24, hidden: int = 40,
              direction: str = "forward") -> onnx.ModelProto:
    """One LSTM/GRU/RNN with constant weights over X [steps, batch, inputs]; outputs Y."""
    rng = np.random.default_rng(0)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    directions = 2 if direction == "bidirectional" else 1
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name) for name, shape in
               (("W", (directions, gates * hidden, inputs)), ("R", (directions, gates * hidden, hidden)),
                ("B", (directions, 2 * gates * hidden)))]
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y"], name="rnn", hidden_size=hidden, direction=direction)
    graph = helper.make_graph([node], "recurrent", [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                                                 [steps, batch, inputs])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT,
                                                             [steps, directions, batch, hidden])], weights)
    return _checked(graph)


def _conv_node(rng, x: str, out: str, cin: int, cout: int, k: int, name: str) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """A Conv whose weights are a Constant node, as exporters write them inside subgraphs."""
    weight = rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.3
    const = helper.make_node("Constant", [], [f"{name}.w"], name=f"{name}.weight",
                             value=numpy_helper.from_array(weight, f"{name}.w"))
    return const, helper.make_node("Conv", [x, f"{name}.w"], [out], name=name, kernel_shape=[k, k], pads=[k // 2] * 4)


def if_model(stem: bool = False) -> onnx.ModelProto:
    """x [1,8,8,8] -> Conv 3x3 8->16 ("conv", output t) -> If(cond): then Conv 3x3 16->32 of t,
    else Conv 1x1 16->32 of t. The branches read t from the outer graph, without naming it an input.
    With `stem`, x first goes through Conv 3x3 8->12 ("stem") -> Relu -> Conv 1x1 12->8."""
    rng = np.random.default_rng(0)
    outer_weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)
                     for name, shape in (("conv.w", (16, 8, 3, 3)), ("stem.w", (12, 8, 3, 3)), ("mix.w", (8, 12, 1, 1)))]
    front = [helper.make_node("Conv", ["x", "stem.w"], ["s"], name="stem", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "mix.w"], ["m"], name="mix", kernel_shape=[1, 1])] if stem else []
    conv = helper.make_node("Conv", ["m" if stem else "x", "conv.w"], ["t"], name="conv", kernel_shape=[3, 3],
                            pads=[1] * 4)

    def branch(name: str, k: int) -> onnx.GraphProto:
        nodes = _conv_node(rng, "t", f"{name}.y", 16, 32, k, f"{name}.conv")
        return helper.make_graph(list(nodes), name, [], [helper.make_tensor_value_info(f"{name}.y", TensorProto.FLOAT,
                                                                                          [1, 32, 8, 8])])

    choose = helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch("then", 3),
                              else_branch=branch("else", 1))
    graph = helper.make_graph([*front, conv, choose], "if_model",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])],
                              outer_weights if stem else outer_weights[:1])
    return _checked(graph)


def loop_model(trips: int | None = 4) -> onnx.ModelProto:
    """h [1,16,8,8] -> Loop: h = Relu(Conv 3x3 16->16 (h)), `trips` times (a constant), or as many
    times as the int64 graph input "trips" says when `trips` is None."""
    rng = np.random.default_rng(0)
    const, conv = _conv_node(rng, "h_in", "h_conv", 16, 16, 3, "body.conv")
    body = helper.make_graph(
        [const, conv, helper.make_node("Relu", ["h_conv"], ["h_out"], name="body.relu"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="body.cond")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, 16, 8, 8])])
    initializers = [numpy_helper.from_array(np.array(True), "keep_going")]
    inputs = [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 16, 8, 8])]
    if trips is None:
        inputs.append(helper.make_tensor_value_info("trips", TensorProto.INT64, []))
    else:
        initializers.append(numpy_helper.from_array(np.array(trips, np.int64), "trips"))
    loop = helper.make_node("Loop", ["trips", "keep_going", "h"], ["y"], name="loop", body=body)
    graph = helper.make_graph([loop], "loop_model", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])], initializers)
    return _checked(graph)


def _checked(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)  # canonical models carry shapes; so do these


def guarded_if_model() -> onnx.ModelProto:
    """An exporter's guard, as in silero-vad: x [batch, k] -> If(k == 1): then Squeeze(x, 1) -> Unsqueeze
    -> MatMul (1 x 8), else MatMul (k x 8). The then branch is invalid whenever k != 1 and never runs
    then; x's dimensions are open, give them with input shapes."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", (1, 8)), ("w4", (4, 8)))]
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    then = helper.make_graph(
        [helper.make_node("Squeeze", ["x", "axis"], ["s"], name="squeeze"),
         helper.make_node("Unsqueeze", ["s", "axis"], ["u"], name="unsqueeze"),
         helper.make_node("MatMul", ["u", "w1"], ["then.y"], name="then.fc")], "then", [],
        [helper.make_tensor_value_info("then.y", TensorProto.FLOAT, ["batch", 8])])
    otherwise = helper.make_graph([helper.make_node("MatMul", ["x", "w4"], ["else.y"], name="else.fc")], "else", [],
                                  [helper.make_tensor_value_info("else.y", TensorProto.FLOAT, ["batch", 8])])
    one = numpy_helper.from_array(np.array(1, np.int64), "one")
    nodes = [helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "one"], ["k"], name="k"),
             helper.make_node("Equal", ["k", "one"], ["single"], name="single"),
             helper.make_node("If", ["single"], ["y"], name="guard", then_branch=then, else_branch=otherwise)]
    graph = helper.make_graph(nodes, "guarded", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "k"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
                              [*weights, axis, one])
    return _checked(graph)


def scan_model(steps: int = 6) -> onnx.ModelProto:
    """Scan over X [steps, 1, 16]: each slice x goes through MatMul (16 -> 32) to Y, and is summed into a state."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w")
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_t"], ["s_out"], name="body.sum"),
         helper.make_node("MatMul", ["x_t", "w"], ["y_t"], name="body.fc")], "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 16]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [1, 32])])
    scan = helper.make_node("Scan", ["s0", "X"], ["s", "Y"], name="scan", body=body, num_scan_inputs=1)
    graph = helper.make_graph([scan], "scan_model",
                              [helper.make_tensor_value_info("s0", TensorProto.FLOAT, [1, 16]),
                               helper.make_tensor_value_info("X", TensorProto.FLOAT, [steps, 1, 16])],
                              [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 16]),
                               helper.make_tensor_value_info("Y", TensorProto.FLOAT, [steps, 1, 32])], [weight])
    return _checked(graph)
