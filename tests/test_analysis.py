"""MACs, parameters, activation memory and block discovery, against hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_tailor.analysis import analyze, find_ibn_blocks, match_activation
from onnx_tailor.ir import Model
from onnx_tailor.passes.canonicalize import canonicalize, load
from tests.graphs import GraphBuilder, ibn_block


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
