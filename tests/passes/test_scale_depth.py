"""scale_depth: narrowed expansions, a valid model, the reported local error, data-aware beating naive."""

from __future__ import annotations


import numpy as np
import onnx
import pytest

from onnx_tailor import accuracy
from onnx_tailor.analysis import find_ibn_blocks
from onnx_tailor.errors import PassError
from onnx_tailor.ir import Model, run
from onnx_tailor.passes import apply_pass, get_pass
from onnx_tailor.passes.canonicalize import canonicalize
from onnx_tailor.passes.capture import capture
from onnx_tailor.passes.scale_depth import scaled_width
from tests.graphs import GraphBuilder, tiny_mobilenet

scale = get_pass("scale_depth")

# Block 5 of the digits model: 36 -> 144 (x4) -> 44, HardSwish, squeeze-excitation, 5x5 depthwise.
SE_BLOCK = "/blocks/blocks.5/body/body.0/Conv"


@pytest.fixture(scope="module")
def halved(digits):
    """Block 5 at alpha 0.5 (144 -> 72), data-aware (the defaults) and naive."""
    model, split, _ = digits
    calib = split.calibration.inputs
    return {name: apply_pass(model, "scale_depth", SE_BLOCK, {"alpha": 0.5, **params}, calib=calib)
            for name, params in (("data_aware", {}), ("naive", {"importance": "first", "refit": "none"}))}


def test_block_expansion_is_narrowed_through_depthwise_and_squeeze_excitation(digits, halved):
    model, split, original_bytes = digits
    new = halved["data_aware"].model
    [block] = [b for b in find_ibn_blocks(new) if b.expand == SE_BLOCK]
    assert block.expanded_channels == 72 == scaled_width(144, 0.5, 8)
    depthwise = new.node(block.depthwise)
    assert new.attr(depthwise, "group") == 72 and new.constant(depthwise.input[1]).shape[0] == 72
    reduce, expand = (n for n in block.squeeze_excitation if new.node(n).op_type == "Conv")
    assert new.constant(new.node(reduce).input[1]).shape[1] == 72  # reads the narrowed pool
    assert new.constant(new.node(expand).input[1]).shape[0] == 72  # makes the narrowed gate
    assert block.out_channels == 44  # the block's interface is unchanged
    onnx.checker.check_model(new.proto, full_check=True)
    assert all(np.isfinite(v).all() for v in run(new, split.evaluation.inputs).values())
    assert model.proto.SerializeToString(deterministic=True) == original_bytes, "the input model was modified"


def test_reported_local_error_is_the_change_of_the_projection_output(digits, halved):
    model, split, _ = digits
    applied = halved["data_aware"]
    tensor = model.node("/blocks/blocks.5/body/body.7/Conv").output[0]
    assert scale.output_tensor(model, applied.sites[0]) == tensor
    calib = split.calibration.inputs
    before = capture(model, [tensor], calib)[tensor].astype(np.float64)
    after = capture(applied.model, [tensor], calib)[tensor].astype(np.float64)
    assert applied.local_errors[0] == pytest.approx(np.linalg.norm(after - before) / np.linalg.norm(before), rel=1e-4)


def test_data_aware_choice_and_refit_beat_the_naive_multiplier(digits, halved):
    model, split, _ = digits
    smart, naive = halved["data_aware"].local_errors[0], halved["naive"].local_errors[0]
    assert smart < naive / 1.5, (smart, naive)  # measured: 0.31 vs 0.63
    original = accuracy.evaluate(model, split.evaluation, "top1").value
    top1 = {k: accuracy.evaluate(v.model, split.evaluation, "top1").value for k, v in halved.items()}
    assert top1["data_aware"] >= original - 3.0  # measured: no change; naive: -50 points
    assert top1["data_aware"] > top1["naive"]


def test_every_block_at_once_is_the_whole_model_multiplier():
    model = Model(canonicalize(tiny_mobilenet()))
    before = {b.expand: b.expanded_channels for b in find_ibn_blocks(model)}
    applied = apply_pass(model, "scale_depth", None, {"alpha": 0.5, "multiple": 8})
    assert {s.anchor for s in applied.sites} == set(before)  # one site per block
    after = {b.expand: b.expanded_channels for b in find_ibn_blocks(applied.model)}
    assert after == {name: scaled_width(c, 0.5, 8) for name, c in before.items()}
    assert all(e is not None and np.isfinite(e) for e in applied.local_errors)
    outputs = run(applied.model, {"input": np.ones((2, 3, 16, 16), np.float32)})
    assert all(np.isfinite(v).all() for v in outputs.values())


def test_alpha_one_finds_no_site_and_says_so(digits):
    model = digits[0]
    assert scale.find(model, alpha=1.0, multiple=1) == []
    declined = scale.declined(model, alpha=1.0, multiple=1)
    assert len(declined) == 9 and all("nothing to remove" in d.reason for d in declined)


def test_declines_a_block_whose_expansion_feeds_a_consumer_outside_it():
    # The SE pool is also read by an auxiliary head: narrowing the expansion would change it too.
    b = GraphBuilder(seed=2)
    h = b.node("Relu", [b.conv("x", 8, 24, 1, name="expand")])
    h = b.node("Relu", [b.conv(h, 24, 24, 3, group=24)])
    pooled = b.node("GlobalAveragePool", [h])
    gate = b.node("Sigmoid", [b.conv(b.node("Relu", [b.conv(pooled, 24, 6, 1)]), 6, 24, 1)])
    y = b.conv(b.node("Mul", [h, gate]), 24, 8, 1, name="project")
    aux = b.conv(pooled, 24, 3, 1, name="aux")
    model = Model(b.build({"x": (1, 8, 6, 6)}, [y, aux]))
    assert [blk.expand for blk in find_ibn_blocks(model)] == ["expand"]
    assert scale.find(model, alpha=0.5) == []
    [declined] = scale.declined(model, alpha=0.5)
    assert declined.reason == "the expanded channels also reach aux (a consumer), outside the block"


def test_rejects_bad_parameters():
    with pytest.raises(PassError, match="alpha must be in"):
        scale.resolve_params({"alpha": 1.5})
    with pytest.raises(PassError, match="alpha must be in"):
        scale.resolve_params({"alpha": 0})


def test_projection_is_fitted_on_what_the_refitted_se_gate_feeds_it():
    # With ridge 0 the projection's refit is plain least squares, so its residual against the original
    # block output must be orthogonal to the inputs it receives in the *rewritten* network (those
    # carry the refitted SE gate), not merely to the original network's.
    model = Model(canonicalize(tiny_mobilenet()))
    [block] = [b for b in find_ibn_blocks(model) if b.squeeze_excitation]
    calib = {"input": np.random.default_rng(1).standard_normal((64, 3, 16, 16)).astype(np.float32)}
    new = apply_pass(model, "scale_depth", block.expand, {"alpha": 0.5, "ridge": 0.0}, calib=calib).model
    project = new.node(block.project)
    x = capture(new, [project.input[0]], calib)[project.input[0]].astype(np.float64)
    target = capture(model, [project.output[0]], calib)[project.output[0]].astype(np.float64)
    rows = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    rows = np.hstack([rows, np.ones((len(rows), 1))])
    weight = np.vstack([new.constant(project.input[1])[:, :, 0, 0].T, new.constant(project.input[2])[None]])
    residual = rows @ weight - np.moveaxis(target, 1, -1).reshape(-1, target.shape[1])
    gradient = rows.T @ residual
    assert np.linalg.norm(gradient) < 1e-4 * np.linalg.norm(rows) * np.linalg.norm(residual)
