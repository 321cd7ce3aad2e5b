"""Small models with the shapes and data that real exports have, for tests of `ir.batch`, random data and probing.

- `fixed_batch_convnet`: a detector-like 1x3x8x8 input whose batch the model fixes;
- `recurrent_step`: x [N, T, F], a state [2, N, H] and a rank-0 int64 sample rate, outputs y [N, H] and the
  new state [2, N, H], every dynamic dimension left unnamed (as silero-vad's export does);
- `time_major`: x [N, T, C] in, [T, N, C] out;
- `two_embeddings`: token_type_ids index a 2-row table, input_ids a 1000-row one;
- `length_branch`: an If on the input's length whose other branch fails: shapes known only by running it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.graphs import OPSET, GraphBuilder


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "odd", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def fixed_batch_convnet() -> onnx.ModelProto:
    """1x3x8x8 -> Conv 3x3 (20 channels, not a multiple of 16) -> Relu -> 1x1 Conv (8) -> pooled [1, 8]."""
    b = GraphBuilder(seed=5)
    h = b.node("Relu", [b.conv("x", 3, 20, 3, name="wide")])
    y = b.node("Flatten", [b.node("GlobalAveragePool", [b.conv(h, 20, 8, 1, name="pw")])], axis=1)
    return b.build({"x": (1, 3, 8, 8)}, [y])


def recurrent_step(frames: int = 5, features: int = 6, hidden: int = 4) -> onnx.ModelProto:
    """y = mean_t(x @ W) * sr / 16000 + state[0]; state_out = 0.5 * state + y (broadcast over layers)."""
    rng = np.random.default_rng(7)
    weights = {"W": rng.standard_normal((features, hidden)).astype(np.float32), "axes1": np.array([1], np.int64),
               "axes0": np.array([0], np.int64), "half": np.float32(0.5), "rate": np.float32(16000.0),
               "first": np.array(0, np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]),
             helper.make_node("ReduceMean", ["xw"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("Cast", ["sr"], ["sr_f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["sr_f", "rate"], ["scale"]),
             helper.make_node("Mul", ["pooled", "scale"], ["scaled"]),
             helper.make_node("Gather", ["state", "first"], ["state0"], axis=0),
             helper.make_node("Add", ["scaled", "state0"], ["y"]),
             helper.make_node("Mul", ["state", "half"], ["decayed"]),
             helper.make_node("Unsqueeze", ["y", "axes0"], ["y1"]),
             helper.make_node("Add", ["decayed", "y1"], ["state_out"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, frames, features]),
              helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, hidden]),
              helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, hidden]),
               helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, None, hidden])]
    return _model(nodes, inputs, outputs, weights)


def time_major(frames: int = 3, channels: int = 4) -> onnx.ModelProto:
    """[N, T, C] @ W -> Transpose -> [T, N, C]: the batch leaves on axis 1."""
    w = np.random.default_rng(8).standard_normal((channels, channels)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Transpose", ["h"], ["y"], perm=[1, 0, 2])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", frames, channels])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [frames, "batch", channels])], {"W": w})


def two_embeddings(length: int = 6, width: int = 8) -> onnx.ModelProto:
    """BERT's input end: Gather on a 1000-row vocabulary (input_ids, through a Cast) plus a 2-row table."""
    rng = np.random.default_rng(9)
    tables = {"vocab": rng.standard_normal((1000, width)).astype(np.float32),
              "types": rng.standard_normal((2, width)).astype(np.float32)}
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
             helper.make_node("Gather", ["vocab", "ids32"], ["words"]),
             helper.make_node("Gather", ["types", "token_type_ids"], ["kinds"]),
             helper.make_node("Add", ["words", "kinds"], ["embedded"])]
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", length])
              for name in ("input_ids", "token_type_ids")]
    return _model(nodes, inputs, [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["batch", length, width])], tables)


def length_branch(length: int = 4) -> onnx.ModelProto:
    """y = x * 2 when x is `length` long, else Reshape(x, [0, 2, 2]), which only a length of 4 fits."""
    then = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
             helper.make_node("Equal", ["n", "wanted"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Relu", ["y"], ["z"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length"])],
                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "length"])],
                  {"two": np.float32(2.0), "one": np.array(1, np.int64), "wanted": np.array(length, np.int64),
                   "shape": np.array([0, 2, 2], np.int64)})
