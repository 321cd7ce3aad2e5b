"""fuse_ibn_expansion: compose where it is exact, least squares where it is not."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_tailor import accuracy
from onnx_tailor.analysis import find_ibn_blocks
from onnx_tailor.ir import Model, check_equivalence
from onnx_tailor.passes import apply_pass, get_pass
from onnx_tailor.passes.canonicalize import canonicalize, load
from onnx_tailor.passes.local_error import local_error
from tests.conftest import DIGITS
from tests.graphs import GraphBuilder

fuse = get_pass("fuse_ibn_expansion")


def _linear_block(dilation: int = 1) -> Model:
    """expand 1x1 (no activation) -> depthwise 3x3 without padding -> project 1x1."""
    b = GraphBuilder(seed=12)
    h = b.conv("x", 4, 12, 1, name="expand")
    weight = b.const((b.rng.standard_normal((12, 1, 3, 3)) * 0.3).astype(np.float32))
    h = b.node("Conv", [h, weight], name="dw", kernel_shape=[3, 3], pads=[0, 0, 0, 0], group=12,
               dilations=[dilation, dilation])
    return Model(canonicalize(b.build({"x": (2, 4, 9, 9)}, [b.conv(h, 12, 6, 1, name="project")])))


def test_compose_is_exact_without_activation_or_padding():
    model = _linear_block()
    [site] = fuse.find(model, init="compose")
    result = apply_pass(model, "fuse_ibn_expansion", site.anchor, {"init": "compose"})
    assert [n.op_type for n in result.model.nodes] == ["Conv", "Conv"]
    assert check_equivalence(model, result.model)
    assert result.local_errors[0] < 1e-5


def test_dilated_depthwise_is_declined():
    model = _linear_block(dilation=2)
    assert fuse.find(model) == []
    assert "dilated" in fuse.declined(model)[0].reason


@pytest.mark.parametrize("block_index", [1, 5])
def test_least_squares_beats_compose_and_keeps_accuracy(digits_split, block_index):
    model = load(DIGITS.path)
    anchor = find_ibn_blocks(model)[block_index].expand
    calib = digits_split.calibration.inputs
    naive = apply_pass(model, "fuse_ibn_expansion", anchor, {"init": "compose"}, calib=calib)
    fitted = apply_pass(model, "fuse_ibn_expansion", anchor, {"init": "lsq"}, calib=calib)
    assert fitted.local_errors[0] < 0.5 * naive.local_errors[0]
    # the reported error is the block output's relative error, recomputed independently
    block_output = model.node(find_ibn_blocks(model)[block_index].project).output[0]
    assert fitted.local_errors[0] == pytest.approx(local_error(model, fitted.model, block_output, calib), rel=1e-6)
    # judged only on the evaluation split, which the fit never saw
    before = accuracy.evaluate(model, digits_split.evaluation, "top1").value
    after = accuracy.evaluate(fitted.model, digits_split.evaluation, "top1").value
    assert after >= before - 1.5
    assert len([n for n in fitted.model.nodes if n.op_type == "Conv"]) == len(
        [n for n in model.nodes if n.op_type == "Conv"]) - 1


def test_one_site_per_ibn_block(model_case):
    model = load(model_case.path, model_case.input_shapes or None)
    assert len(fuse.find(model)) == model_case.ibn_blocks
