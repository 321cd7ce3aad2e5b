import numpy as np
import pytest

from onnx_tailor.errors import PassError
from onnx_tailor.ir import Model, check_equivalence
from onnx_tailor.passes import apply_pass, get_pass
from onnx_tailor.passes.canonicalize import canonicalize
from tests.graphs import GraphBuilder, ibn_block, tiny_mobilenet
from tests.graphs_beyond_float import if_model

pad = get_pass("pad_channels")


def test_pads_producer_filters_and_consumer_inputs_with_zeros():
    b = GraphBuilder(seed=5)
    y = b.conv(b.node("Relu", [b.conv("x", 3, 20, 3, name="producer")]), 20, 7, 1, name="consumer")
    model = Model(b.build({"x": (1, 3, 8, 8)}, [y]))
    result = apply_pass(model, "pad_channels", "producer", {"multiple": 8})
    new = result.model
    w = new.constant(new.node("producer").input[1])
    v = new.constant(new.node("consumer").input[1])
    assert w.shape[0] == 24 and v.shape[1] == 24
    assert not np.any(w[20:]) and not np.any(new.constant(new.node("producer").input[2])[20:])
    assert not np.any(v[:, 20:])
    np.testing.assert_array_equal(v[:, :20], model.constant(model.node("consumer").input[1]))
    assert check_equivalence(model, result.model)


def test_residual_stage_and_squeeze_excitation_are_padded_as_a_group():
    b = GraphBuilder(seed=6)
    x = b.conv("x", 3, 20, 3, name="stem")
    x = ibn_block(b, x, 20, 60, 20, se=True, activation="hardswish_decomposed")  # residual + SE
    x = ibn_block(b, x, 20, 44, 20, k=5, activation="swish")
    model = Model(b.build({"x": (1, 3, 8, 8)}, [b.conv(x, 20, 5, 1)]))
    site = next(s for s in pad.find(model, multiple=16) if s.anchor == "stem")
    assert "widens 3 conv(s)" in site.summary  # the stem and both projections feed the residual chain
    result = apply_pass(model, "pad_channels", "stem", {"multiple": 16})
    assert check_equivalence(model, result.model)


def test_classifier_head_through_flatten_and_gemm():
    model = Model(tiny_mobilenet())
    result = apply_pass(model, "pad_channels", params={"multiple": 16})
    assert result.sites
    assert check_equivalence(model, result.model)


@pytest.mark.parametrize("ending", ["graph_output", "reshape"])
def test_declines_with_the_node_that_stops_it(ending):
    b = GraphBuilder(seed=7)
    y = b.node("Relu", [b.conv("x", 3, 20, 3, name="producer")])
    if ending == "reshape":
        y = b.node("Reshape", [y, b.const(np.array([1, -1]))], name="flat")
    model = Model(b.build({"x": (1, 3, 4, 4)}, [y]))
    assert pad.find(model, multiple=8) == []
    [declined] = pad.declined(model, multiple=8)
    expected = "graph output" if ending == "graph_output" else "flat (Reshape)"
    assert declined.anchor == "producer" and expected in declined.reason


def test_aligned_convs_are_not_sites():
    b = GraphBuilder()
    model = Model(b.build({"x": (1, 3, 4, 4)}, [b.conv(b.conv("x", 3, 16, 3), 16, 4, 1)]))
    assert [s.anchor for s in pad.find(model, multiple=4)] == []


def test_rejects_a_useless_multiple():
    with pytest.raises(PassError, match=r"in \[2, 4096\], got 1$"):
        pad.resolve_params({"multiple": "1"})
    with pytest.raises(PassError, match=r"in \[2, 4096\], got 1000000000$"):  # would pad to gigabytes
        pad.resolve_params({"multiple": "1000000000"})
    with pytest.raises(PassError, match="needs a int"):
        pad.resolve_params({"multiple": "wide"})


def test_reshape_that_flattens_into_matmul_is_followed_and_its_shape_widened():
    # Paddle's classifier head: GlobalAveragePool -> Reshape([-1, C]) -> MatMul.
    b = GraphBuilder(seed=11)
    y = b.node("GlobalAveragePool", [b.conv("x", 3, 20, 3, name="producer")])
    y = b.node("Reshape", [y, b.const(np.array([-1, 20]))], name="flat")
    y = b.node("MatMul", [y, b.const(b.rng.standard_normal((20, 2)).astype(np.float32))], name="fc")
    model = Model(b.build({"x": (2, 3, 6, 6)}, [y]))
    result = apply_pass(model, "pad_channels", "producer", {"multiple": 8})
    new = result.model
    assert list(new.constant(new.node("flat").input[1])) == [-1, 24]
    assert new.constant(new.node("fc").input[1]).shape == (24, 2)
    assert check_equivalence(model, result.model)


def test_a_conv_output_read_inside_an_if_branch_is_declined_with_that_reason():
    # t = conv(x) is read only inside the If's branches (an outer-scope reference, not an input of the If)
    model = Model(canonicalize(if_model()))
    assert [c.name for c in model.consumers("t")] == ["if"]
    [declined] = pad.declined(model, multiple=32)
    assert declined.anchor == "conv" and declined.reason == "if (If) reads the padded channels inside its subgraph"
    with pytest.raises(PassError, match="inside its subgraph"):
        apply_pass(model, "pad_channels", "conv", {"multiple": 32})


def test_a_site_elsewhere_in_a_model_with_an_if_is_padded_and_verified():
    model = Model(canonicalize(if_model(stem=True)))
    assert [s.anchor for s in pad.find(model, multiple=16)] == ["stem", "mix"]
    result = apply_pass(model, "pad_channels", "stem", {"multiple": 16})  # verified numerically inside
    assert result.model.constant(result.model.node("stem").input[1]).shape == (16, 8, 3, 3)
    assert [n.op_type for n in result.model.nodes] == ["Conv", "Relu", "Conv", "Conv", "If"]
    assert check_equivalence(model, result.model)
