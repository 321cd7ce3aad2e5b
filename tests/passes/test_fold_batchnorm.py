import numpy as np

from onnx_tailor.ir import Model, check_equivalence
from onnx_tailor.passes import apply_pass, get_pass
from tests.graphs import GraphBuilder


def _conv_bn(shared_output: bool = False):
    b = GraphBuilder(seed=3)
    y = b.batchnorm(b.conv("x", 4, 6, 3, name="conv"), 6, name="bn")
    outputs = [y]
    if shared_output:  # the Conv's raw output is also read elsewhere: BN cannot be folded away
        outputs.append(b.node("Relu", [b.nodes[0].output[0]]))
    return Model(b.build({"x": (1, 4, 8, 8)}, outputs))


def test_folds_conv_bn_into_one_conv_with_the_documented_formula():
    model = _conv_bn()
    result = apply_pass(model, "fold_batchnorm", "bn")
    assert [n.op_type for n in result.model.nodes] == ["Conv"]
    conv = model.node("conv")
    w, bias = model.constant(conv.input[1]), model.constant(conv.input[2])
    gamma, beta, mean, var = (model.constant(i) for i in model.node("bn").input[1:5])
    s = gamma / np.sqrt(var + 1e-5)
    folded = result.model.node("conv")
    np.testing.assert_allclose(result.model.constant(folded.input[1]), w * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(result.model.constant(folded.input[2]), (bias - mean) * s + beta, rtol=1e-5, atol=1e-7)
    assert check_equivalence(model, result.model)


def test_declines_when_the_conv_output_has_other_readers():
    model = _conv_bn(shared_output=True)
    fold = get_pass("fold_batchnorm")
    assert fold.find(model) == []
    [declined] = fold.declined(model)
    assert declined.anchor == "bn" and "other consumers" in declined.reason


def test_declines_batchnorm_not_fed_by_a_conv():
    b = GraphBuilder()
    y = b.batchnorm(b.node("Relu", ["x"]), 4, name="bn")
    model = Model(b.build({"x": (1, 4, 5, 5)}, [y]))
    assert get_pass("fold_batchnorm").find(model) == []
    assert "not a Conv" in get_pass("fold_batchnorm").declined(model)[0].reason
