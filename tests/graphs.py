"""Small hand-built ONNX graphs with known answers, for tests.

Each builder returns an `onnx.ModelProto` (opset 17, float32, NCHW) with
seeded weights, so expected MACs, shapes and rewrites can be computed by hand.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class GraphBuilder:
    """Accumulates nodes and seeded initializers; `build()` returns a checked model."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{base}{self._count}"

    def const(self, value: np.ndarray, base: str = "c") -> str:
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        out = self._name(op.lower() + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=name or self._name(op), **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, group: int = 1,
             bias: bool = True, name: str | None = None) -> str:
        weight = self.const(self.rng.standard_normal((cout, cin // group, k, k)).astype(np.float32) * 0.3, "w")
        inputs = [x, weight]
        if bias:
            inputs.append(self.const(self.rng.standard_normal(cout).astype(np.float32) * 0.1, "b"))
        return self.node("Conv", inputs, name=name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[k // 2] * 4, group=group)

    def batchnorm(self, x: str, channels: int, name: str | None = None) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.5, channels), r.standard_normal(channels) * 0.1,
                  r.standard_normal(channels) * 0.1, r.uniform(0.5, 2.0, channels)]
        return self.node("BatchNormalization", [x] + [self.const(p.astype(np.float32), "bn") for p in params],
                         name=name, epsilon=1e-5)

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, self.const(np.float32(0.0)), self.const(np.float32(6.0))])

    def hardswish_decomposed(self, x: str) -> str:
        """Paddle's spelling: x * Clip(x + 3, 0, 6) / 6."""
        shifted = self.node("Add", [x, self.const(np.float32(3.0))])
        clipped = self.node("Clip", [shifted, self.const(np.float32(0.0)), self.const(np.float32(6.0))])
        product = self.node("Mul", [x, clipped])
        return self.node("Div", [product, self.const(np.float32(6.0))])

    def swish(self, x: str, beta: float | None = None) -> str:
        """x * Sigmoid(x), or x * Sigmoid(beta * x) as Paddle exports it (with beta 1.0)."""
        gate_input = x if beta is None else self.node("Mul", [x, self.const(np.float32(beta))])
        return self.node("Mul", [x, self.node("Sigmoid", [gate_input])])

    def gelu_erf(self, x: str) -> str:
        """PyTorch's exact GELU: x * (1 + erf(x / sqrt 2)) * 0.5."""
        erf = self.node("Erf", [self.node("Div", [x, self.const(np.float32(np.sqrt(2.0)))])])
        return self.node("Mul", [self.node("Mul", [x, self.node("Add", [erf, self.const(np.float32(1.0))])]),
                                 self.const(np.float32(0.5))])

    def activation_chain(self, x: str, spelling: str) -> str:
        """`x` through one activation chain, spelled as an exporter writes it."""
        if spelling == "scaled_hardswish":  # a scale and shift BatchNorm folding left, then HardSwish
            x = self.node("Add", [self.node("Mul", [x, self.const(np.float32(0.8))]), self.const(np.float32(0.1))])
        return {"hardswish_decomposed": self.hardswish_decomposed, "scaled_hardswish": self.hardswish_decomposed,
                "swish": self.swish, "swish_scaled": lambda t: self.swish(t, 1.0), "gelu_erf": self.gelu_erf}[spelling](x)

    def build(self, inputs: dict[str, tuple], outputs: list[str], dynamic_batch: bool = False) -> onnx.ModelProto:
        def info(name, shape, batch_param):
            dims = list(shape)
            if batch_param:
                dims[0] = "batch"
            return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

        graph = helper.make_graph(
            self.nodes, "test_graph",
            [info(n, s, dynamic_batch) for n, s in inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.output}
        for out in model.graph.output:  # declare outputs with the types inference found
            out.CopyFrom(inferred[out.name])
            if dynamic_batch:
                out.type.tensor_type.shape.dim[0].dim_param = "batch"
        onnx.checker.check_model(model)
        return onnx.shape_inference.infer_shapes(model)  # canonical models carry shapes; so do these


def ibn_block(b: GraphBuilder, x: str, cin: int, cexp: int, cout: int, k: int = 3, stride: int = 1,
              activation: str = "relu6", se: bool = False, residual: bool | None = None) -> str:
    """expand 1x1 -> act -> depthwise kxk -> act -> [SE] -> project 1x1 -> [+ x]."""
    act = {"relu6": b.relu6, "relu": lambda t: b.node("Relu", [t]),
           "hardswish": lambda t: b.node("HardSwish", [t]), "hardswish_decomposed": b.hardswish_decomposed,
           "swish": lambda t: b.node("Mul", [t, b.node("Sigmoid", [t])]),
           "x_hardsigmoid": lambda t: b.node("Mul", [t, b.node("HardSigmoid", [t], alpha=0.2, beta=0.5)])}[activation]
    h = act(b.batchnorm(b.conv(x, cin, cexp, 1, bias=False), cexp))
    h = act(b.batchnorm(b.conv(h, cexp, cexp, k, stride, group=cexp, bias=False), cexp))
    if se:
        squeezed = b.node("GlobalAveragePool", [h])
        gate = b.node("HardSigmoid", [b.conv(b.node("Relu", [b.conv(squeezed, cexp, max(cexp // 4, 1))]),
                                              max(cexp // 4, 1), cexp)], alpha=0.2, beta=0.5)
        h = b.node("Mul", [h, gate])
    y = b.batchnorm(b.conv(h, cexp, cout, 1, bias=False), cout)
    if residual if residual is not None else (stride == 1 and cin == cout):
        y = b.node("Add", [y, x])
    return y


def bare_pair(activation: str = "hardswish_decomposed", seed: int = 7) -> onnx.ModelProto:
    """expand 1x1 (4 -> 12) -> activation chain -> depthwise 3x3 -> ReLU6 -> GlobalAveragePool: an
    expand-depthwise pair with no projection after it (not an IBN block). Nodes "expand" and "dw"."""
    b = GraphBuilder(seed)
    h = b.activation_chain(b.conv("x", 4, 12, 1, name="expand"), activation)
    y = b.node("GlobalAveragePool", [b.relu6(b.conv(h, 12, 12, 3, group=12, name="dw"))])
    return b.build({"x": (4, 4, 10, 10)}, [y])


def tiny_mobilenet(seed: int = 0, activation: str = "relu6", dynamic_batch: bool = True) -> onnx.ModelProto:
    """Stem + three IBN blocks (one strided, one residual with SE) + classifier head."""
    b = GraphBuilder(seed)
    x = b.relu6(b.batchnorm(b.conv("input", 3, 12, 3, 1, bias=False), 12))
    x = ibn_block(b, x, 12, 36, 20, k=3, stride=2, activation=activation)
    x = ibn_block(b, x, 20, 60, 20, k=5, stride=1, activation=activation, se=True)
    x = ibn_block(b, x, 20, 60, 24, k=3, stride=1, activation=activation)
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.node("Gemm", [x, b.const(b.rng.standard_normal((10, 24)).astype(np.float32), "fc"),
                        b.const(np.zeros(10, np.float32), "fcb")], transB=1)
    return b.build({"input": (1, 3, 16, 16)}, [x], dynamic_batch=dynamic_batch)


# -- models whose types canonicalization must keep ------------------------------------------


def _typed_model(nodes: list, initializers: list, x_shape: list, y_shape: list, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "typed", [helper.make_tensor_value_info("x", elem, x_shape)],
                              [helper.make_tensor_value_info("y", elem, y_shape)], initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def _int8_weight(name: str = "w") -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(0).integers(-127, 128, (8, 4)).astype(np.int8), name)


_QUANTIZED = {
    # DequantizeLinear(int8 weight) -> MatMul: the QDQ spelling
    "dequantize": lambda: _typed_model(
        [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]), helper.make_node("MatMul", ["x", "wf"], ["y"])],
        [_int8_weight(), numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.int8(0), "z")],
        [2, 8], [2, 4]),
    # Cast(int8 weight) * scale -> MatMul: what onnxruntime constant-folded into a float32 weight
    "cast": lambda: _typed_model(
        [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["wf", "s"], ["wq"]),
         helper.make_node("MatMul", ["x", "wq"], ["y"])],
        [_int8_weight(), numpy_helper.from_array(np.float32(0.02), "s")], [2, 8], [2, 4]),
    # DynamicQuantizeLinear -> MatMulInteger(int8 weight): onnxruntime's dynamic quantization
    "dynamic": lambda: _typed_model(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
         helper.make_node("MatMulInteger", ["xq", "w", "xz", "z"], ["acc"]),
         helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["xs", "s"], ["scale"]), helper.make_node("Mul", ["accf", "scale"], ["y"])],
        [_int8_weight(), numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.int8(0), "z")],
        [2, 8], [2, 4]),
}
QUANTIZED_SPELLINGS = list(_QUANTIZED)


def quantized_matmul(spelling: str) -> onnx.ModelProto:
    """x[2, 8] @ an int8 weight [8, 4] -> y, in one of the spellings of `QUANTIZED_SPELLINGS`."""
    return _QUANTIZED[spelling]()


def float16_conv_scale_softmax() -> onnx.ModelProto:
    """A float16 model: Conv 3x3 -> Mul(per-channel) -> Softmax, which onnxruntime's CPU provider lacks kernels for."""
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float16), "w"),
               numpy_helper.from_array(rng.standard_normal(4).astype(np.float16), "b"),
               numpy_helper.from_array(rng.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float16), "s")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Softmax", ["m"], ["y"], axis=1)]
    return _typed_model(nodes, weights, [1, 3, 6, 6], [1, 4, 6, 6], TensorProto.FLOAT16)


def tensor_value(model, name: str, feeds) -> np.ndarray:
    """`name` on `feeds`, computed with onnxruntime directly: an independent check of
    what the library's own capture/local_error report."""
    import onnxruntime as ort

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    proto.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run([name], feeds)[0].astype(np.float64)
