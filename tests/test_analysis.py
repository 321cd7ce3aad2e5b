"""MACs, parameters, activation memory and block discovery, against hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_tailor.analysis import (UnpairedExpand, analyze, find_expand_depthwise_pairs, find_ibn_blocks, is_depthwise,
                                  match_activation, match_activation_chain, pair_ending_at)
from onnx_tailor.ir import Model
from onnx_tailor.passes.canonicalize import canonicalize, load
from tests.graphs import GraphBuilder, bare_pair, ibn_block


def test_conv_and_gemm_macs_and_params_by_hand():
    b = GraphBuilder()
    y = b.conv("x", 3, 8, 3, stride=2, name="conv")  # out 8 x 8 x 8
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])], axis=1)
    y = b.node("Gemm", [y, b.const(np.ones((8, 5), np.float32)), b.const(np.zeros(5, np.float32))], name="fc")
    report = analyze(Model(b.build({"x": (1, 3, 16, 16)}, [y])))
    macs = {n.name: n.macs for n in report.nodes}
    assert macs["conv"] == 8 * 8 * 8 * 3 * 3 * 3
    assert macs["fc"] == 8 * 5
    assert report.macs == macs["conv"] + macs["fc"]
    assert report.params == 8 * 3 * 3 * 3 + 8 + 8 * 5 + 5
    assert report.param_bytes == 4 * report.params


def test_peak_activation_is_a_liveness_sweep():
    # x (1x4x8x8 floats = 1 KiB) -> a -> b, and c = a + b: a stays live until the Add.
    b = GraphBuilder()
    a = b.node("Relu", ["x"], name="a")
    bb = b.node("Sigmoid", [a], name="b")
    c = b.node("Add", [a, bb], name="c")
    report = analyze(Model(b.build({"x": (1, 4, 8, 8)}, [c])))
    kib = 4 * 8 * 8 * 4
    # while "b" runs: a and b live, x dead (its last reader ran); while "c" runs: a, b, c.
    assert report.peak_activation_bytes == 3 * kib
    assert report.peak_at == "c"


@pytest.mark.parametrize("spelling,kind", [
    ("relu6", "relu6"), ("relu", "relu"), ("hardswish", "hardswish"),
    ("hardswish_decomposed", "hardswish"), ("x_hardsigmoid", "hardswish"), ("swish", "swish"),
])
def test_ibn_blocks_are_found_whatever_the_activation_spelling(spelling, kind):
    b = GraphBuilder()
    x = b.conv("x", 3, 16, 3, name="stem")
    y = ibn_block(b, x, 16, 48, 16, k=5, stride=1, activation=spelling, se=True)
    y = ibn_block(b, y, 16, 40, 24, k=3, stride=2, activation=spelling)
    model = Model(canonicalize(b.build({"x": (1, 3, 16, 16)}, [y])))  # blocks are found on canonical models
    blocks = find_ibn_blocks(model)
    assert len(blocks) == 2
    first, second = blocks
    assert (first.in_channels, first.expanded_channels, first.out_channels) == (16, 48, 16)
    assert first.kernel == (5, 5) and first.stride == (1, 1)
    assert first.expand_activation == kind and first.depthwise_activation == kind
    assert first.squeeze_excitation and first.residual is not None
    assert not second.squeeze_excitation and second.residual is None and second.stride == (2, 2)
    assert first.resolution == (16, 16) and second.resolution == (16, 16)
    assert second.misaligned(16) == ["expanded", "out"]
    # each block's expand and depthwise convs are one of the model's expand-depthwise pairs
    pairs = find_expand_depthwise_pairs(model)
    assert [(p.expand, p.depthwise, p.activation) for p in pairs] == [
        (blk.expand, blk.depthwise, blk.expand_activation) for blk in blocks]
    assert all(p.nodes < blk.nodes for p, blk in zip(pairs, blocks))


def test_activation_shared_with_another_reader_is_not_an_activation():
    b = GraphBuilder()
    y = b.conv("x", 3, 4, 1)
    r = b.node("Relu", [y])
    other = b.node("Sigmoid", [y])
    model = Model(b.build({"x": (1, 3, 4, 4)}, [r, other]))
    assert match_activation(model, y) is None


def test_real_models_report_every_block(model_case):
    model = load(model_case.path, model_case.input_shapes or None)
    report = analyze(model)
    assert len(report.blocks) == model_case.ibn_blocks
    assert report.macs > 0 and report.params > 0 and report.peak_activation_bytes > 0
    for block in report.blocks:
        assert block.resolution is not None
        assert block.expanded_channels >= block.in_channels or model_case.name != "digits"


# spelling -> the kind its chain is reported as
CHAINS = {"hardswish_decomposed": "hardswish", "scaled_hardswish": "affine+hardswish", "swish": "swish",
          "swish_scaled": "swish", "gelu_erf": "gelu"}


@pytest.mark.parametrize("spelling", CHAINS)
def test_an_activation_chain_between_two_convs_makes_a_bare_pair(spelling):
    model = Model(bare_pair(spelling))  # not canonicalized: a leftover scale and shift must stay as written
    expand, dw = model.node("expand"), model.node("dw")
    chain = match_activation_chain(model, expand.output[0])
    assert chain.kind == CHAINS[spelling] and chain.output == dw.input[0]
    # every node between the two convs is in the chain, once, in topological order
    order = [n.name for n in model.nodes]
    assert list(chain.nodes) == order[order.index("expand") + 1:order.index("dw")]
    [pair] = find_expand_depthwise_pairs(model)
    assert (pair.expand, pair.depthwise, pair.activation) == ("expand", "dw", CHAINS[spelling])
    assert pair.nodes == {"expand", "dw", *chain.nodes}
    assert (pair.in_channels, pair.expanded_channels, pair.kernel, pair.resolution) == (4, 12, (3, 3), (10, 10))
    assert find_ibn_blocks(model) == []  # no projection follows: a pair, not a block
    report = analyze(model)
    assert report.pairs == [pair] and report.blocks == []
    assert report.to_dict()["pairs"][0]["nodes"] == sorted(pair.nodes)


def _shared_pair(shared: str) -> Model:
    """expand -> HardSwish -> x2 -> depthwise, with a second reader ("other") of the expansion or of the
    HardSwish output inside the chain."""
    b = GraphBuilder(seed=5)
    expanded = b.conv("x", 4, 12, 1, name="expand")
    activated = b.hardswish_decomposed(expanded)
    doubled = b.node("Mul", [activated, b.const(np.float32(2.0))])
    y = b.conv(doubled, 12, 12, 3, group=12, name="dw")
    other = b.node("Sigmoid", [expanded if shared == "expansion" else activated], name="other")
    return Model(b.build({"x": (2, 4, 8, 8)}, [y, other]))


@pytest.mark.parametrize("shared", ["expansion", "chain"])
def test_a_pair_whose_intermediate_has_another_reader_is_not_a_pair(shared):
    model = _shared_pair(shared)
    assert find_expand_depthwise_pairs(model) == [] and find_ibn_blocks(model) == []
    unpaired = pair_ending_at(model, model.node("dw"))
    assert isinstance(unpaired, UnpairedExpand) and (unpaired.expand, unpaired.depthwise) == ("expand", "dw")
    read_twice = model.node("other").input[0]
    assert unpaired.reason == f"{read_twice}, between expand and dw, is also read by other"


def test_the_pp_ocrv3_recognizer_has_twelve_pairs(paddle_rec):
    """LCNet: stem 3x3 conv, then 12 blocks of depthwise conv -> HardSwish -> [SE] -> 1x1 conv -> HardSwish.
    Checked by hand on the node list (`inspect --per-node`): the model has 13 depthwise convs (Conv_1, 3,
    ..., 23, 27); 12 read a 1x1 conv's output through Add(+3)/Clip(0, 6)/Mul/Div(6), the first reads the
    3x3 stride-2 stem's. So 12 pairs; and each pair is followed by the next block's 1x1 conv, which the
    IBN reading takes for a projection: the same 12 are IBN blocks. Canonicalization folds HardSwish's
    Div(6) into the depthwise conv's weights, so a pair is expand, Add, Clip, Mul, depthwise: 5 nodes."""
    model = load(paddle_rec, {"x": (1, 3, 48, 320)})
    pairs = find_expand_depthwise_pairs(model)
    depthwise = [n for n in model.nodes if is_depthwise(model, n)]
    assert len(depthwise) == 13 and len(pairs) == 12
    assert {p.activation for p in pairs} == {"hardswish"} and {len(p.nodes) for p in pairs} == {5}
    [unpaired] = [n for n in depthwise if n.name not in {p.depthwise for p in pairs}]
    stem = model.nodes[0]
    assert model.declared_shape(stem.input[1])[2:] == (3, 3)
    assert match_activation_chain(model, stem.output[0]).output == unpaired.input[0]
    assert pair_ending_at(model, unpaired) is None
    assert [(b.expand, b.depthwise) for b in find_ibn_blocks(model)] == [(p.expand, p.depthwise) for p in pairs]
