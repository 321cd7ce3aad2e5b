import numpy as np

from onnx_tailor.ir import Model, check_equivalence
from onnx_tailor.passes import apply_pass, get_pass
from tests.graphs import GraphBuilder, float16_conv_scale_softmax, quantized_matmul


def _model_with_clutter():
    b = GraphBuilder(seed=4)
    y = b.conv("x", 3, 4, 1, bias=False, name="conv")
    bias = b.node("Reshape", [b.const(np.arange(4, dtype=np.float32)), b.const(np.array([1, 4, 1, 1]))],
                  name="bias_reshape")  # constant sub-graph, as Paddle exports SE biases
    y = b.node("Add", [y, bias])
    y = b.node("Identity", [b.node("Relu", [y])], name="identity")
    return Model(b.build({"x": (1, 3, 5, 5)}, [y]))


def test_folds_constant_subgraphs_and_identities():
    model = _model_with_clutter()
    result = apply_pass(model, "simplify")
    ops = [n.op_type for n in result.model.nodes]
    assert "Identity" not in ops and "Reshape" not in ops
    assert ops.count("Conv") == 1
    assert check_equivalence(model, result.model)


def test_a_clean_model_has_no_site():
    b = GraphBuilder()
    model = Model(b.build({"x": (1, 3, 5, 5)}, [b.node("Relu", [b.conv("x", 3, 4, 3)])]))
    assert get_pass("simplify").find(model) == []


def test_quantized_weights_and_float16_models_are_not_sites():
    """Canonicalization keeps their types, so simplify has nothing it may do to them."""
    assert get_pass("simplify").find(Model(quantized_matmul("cast"))) == []
    float16 = Model(float16_conv_scale_softmax())
    assert get_pass("simplify").find(float16) == []
    assert "float16" in get_pass("simplify").declined(float16)[0].reason
