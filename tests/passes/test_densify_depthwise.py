import numpy as np

from onnx_tailor.ir import Model, check_equivalence
from onnx_tailor.passes import apply_pass, get_pass
from tests.graphs import GraphBuilder


def test_depthwise_becomes_block_diagonal_dense_conv():
    b = GraphBuilder(seed=1)
    y = b.conv("x", 6, 6, 3, group=6, name="dw")
    model = Model(b.build({"x": (1, 6, 7, 7)}, [y]))
    result = apply_pass(model, "densify_depthwise", "dw")
    conv = result.model.node("dw")
    assert result.model.attr(conv, "group") == 1
    dense = result.model.constant(conv.input[1])
    original = model.constant(model.node("dw").input[1])
    assert dense.shape == (6, 6, 3, 3)
    for o in range(6):  # output o reads only input channel o, with its original filter
        np.testing.assert_array_equal(dense[o, o], original[o, 0])
        assert not np.any(np.delete(dense[o], o, axis=0))
    assert check_equivalence(model, result.model)


def test_grouped_conv_with_several_channels_per_group():
    b = GraphBuilder(seed=2)
    y = b.conv("x", 8, 12, 3, group=4, name="grouped")
    model = Model(b.build({"x": (2, 8, 6, 6)}, [y]))
    result = apply_pass(model, "densify_depthwise")
    assert result.model.constant(result.model.node("grouped").input[1]).shape == (12, 8, 3, 3)
    assert check_equivalence(model, result.model)


def test_standard_convs_are_not_sites():
    b = GraphBuilder()
    model = Model(b.build({"x": (1, 3, 8, 8)}, [b.conv("x", 3, 5, 3)]))
    assert get_pass("densify_depthwise").find(model) == []
    assert get_pass("densify_depthwise").declined(model) == []
