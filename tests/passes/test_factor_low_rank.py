"""factor_low_rank: exact at full rank, honest about what it saves and what it costs.

Each kind of site (MatMul, Gemm, 1x1 Conv, Gather embedding) has a small
model; the reduced-rank checks count the initializer elements of the
returned and the saved model against what the site says, and recompute the
local error with onnxruntime independently of `passes.capture`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_tailor import accuracy
from onnx_tailor.costmodel import cost_model_for, load_target
from onnx_tailor.errors import PassError
from onnx_tailor.ir import Model, check_equivalence, run, save
from onnx_tailor.passes import Site, apply_pass, apply_step, get_pass
from onnx_tailor.passes.canonicalize import load
from onnx_tailor.passes import factor_low_rank
from onnx_tailor.passes.factor_low_rank import choose_rank, energy_kept
from onnx_tailor.passes.local_error import local_error
from tests.graphs import GraphBuilder, tensor_value

REPO = Path(__file__).resolve().parents[2]
factor = get_pass("factor_low_rank")
rng = np.random.default_rng(0)


def forced_rank(model: Model, anchor: str, rank: int, method: str = "svd") -> Site:
    """The site at `anchor` with its rank forced to `rank`, which find() may decline (full rank saves nothing)."""
    [site] = [s for s in factor.find(model, rank=1) if s.anchor == anchor]
    return Site(site.pass_name, site.anchor, site.nodes, (("method", method), ("rank", rank)), match=site.match)


def _randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, inputs, outputs, inits) -> Model:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                   for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(proto).graph.output}
    for out in proto.graph.output:  # declare outputs with the types inference found, as GraphBuilder does
        out.CopyFrom(inferred[out.name])
    onnx.checker.check_model(proto)
    return Model(onnx.shape_inference.infer_shapes(proto))


def _float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch"] + list(shape[1:]))


# One small model per kind of site; the site's output is read by a Relu so that it is an
# intermediate tensor (the local error must find it by name in both models).

def matmul_model(weight=None) -> Model:
    weight = _randn(24, 16) if weight is None else weight
    return _model([helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
                   helper.make_node("Relu", ["h"], ["y"], name="act")],
                  [_float_input("x", (2, 5, weight.shape[0]))], ["y"], {"w": weight})


def gemm_model() -> Model:
    return _model([helper.make_node("Gemm", ["x", "b", "c"], ["h"], name="fc", transB=1, alpha=0.7, beta=1.3),
                   helper.make_node("Relu", ["h"], ["y"], name="act")],
                  [_float_input("x", (3, 24))], ["y"], {"b": _randn(16, 24), "c": _randn(16)})


def conv_model(stride=2, pads=1) -> Model:
    # A strided, padded 1x1 conv: the border outputs are the bias alone.
    return _model([helper.make_node("Conv", ["x", "w", "bias"], ["h"], name="pw", kernel_shape=[1, 1],
                                    strides=[stride, stride], pads=[pads] * 4),
                   helper.make_node("Relu", ["h"], ["y"], name="act")],
                  [_float_input("x", (2, 12, 9, 9))], ["y"], {"w": _randn(20, 12, 1, 1), "bias": _randn(20)})


def gather_model(vocab=40, dim=16, table=None, axis=0) -> Model:
    table = _randn(vocab, dim) if table is None else table
    return _model([helper.make_node("Gather", ["table", "ids"], ["h"], name="embed", axis=axis),
                   helper.make_node("Relu", ["h"], ["y"], name="act")],
                  [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 6])], ["y"], {"table": table})


BUILDERS = {"MatMul": matmul_model, "Gemm": gemm_model, "Conv": conv_model, "Gather": gather_model}
ANCHORS = {"MatMul": "fc", "Gemm": "fc", "Conv": "pw", "Gather": "embed"}
# (K, N) of x·W for each model above
SHAPES = {"MatMul": (24, 16), "Gemm": (24, 16), "Conv": (12, 20), "Gather": (40, 16)}
# What the docstring promises each kind becomes.
AFTER = {"MatMul": Counter(MatMul=2), "Gemm": Counter(MatMul=1, Gemm=1), "Conv": Counter(Conv=2),
         "Gather": Counter(Gather=1, MatMul=1)}


def calibration(model: Model, n: int = 16, seed: int = 1) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph_inputs:
        shape = (n,) + tuple(model.declared_shape(vi.name)[1:])
        if vi.type.tensor_type.elem_type == TensorProto.INT64:
            vocab = model.constant("table").shape[0]
            feeds[vi.name] = np.minimum(r.zipf(1.5, shape) - 1, vocab - 1).astype(np.int64)  # word-like frequencies
        else:
            feeds[vi.name] = r.standard_normal(shape).astype(np.float32)
    return feeds


def with_batch(model: Model, n: int) -> Model:
    return model.with_input_shapes({vi.name: (n,) + model.input_shapes[vi.name][1:] for vi in model.graph_inputs})


def parameters(proto: onnx.ModelProto) -> int:
    return sum(math.prod(t.dims) for t in proto.graph.initializer)


def reported(site) -> tuple[int, int]:
    before, after = re.search(r"parameters (\d+) -> (\d+)", site.summary).groups()
    return int(before), int(after)


def ops(model: Model) -> Counter:
    return Counter(n.op_type for n in model.nodes if n.op_type != "Relu")


# -- exactness -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["svd", "whitened"])
@pytest.mark.parametrize("kind", list(BUILDERS))
def test_full_rank_is_exact(kind, method):
    # Full rank never saves parameters, so find() declines it; the rewrite itself is forced here.
    model = BUILDERS[kind]()
    serialized = model.serialized
    k, n = SHAPES[kind]
    [declined] = factor.declined(model, rank=min(k, n))
    assert "would not reduce parameters" in declined.reason
    site = forced_rank(model, ANCHORS[kind], min(k, n), method)
    rewritten = apply_step(model, site, calibration(model)).model
    comparison = check_equivalence(model, rewritten, rtol=1e-5)
    assert comparison, comparison.detail
    assert ops(rewritten) == AFTER[kind]
    assert model.serialized == serialized, "the input model was modified"


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_a_preview_is_the_rewrite_s_structure_and_cost_without_its_svd(kind, monkeypatch):
    model, target = BUILDERS[kind](), "npu-p32"  # the learned cost model reads dims and attributes
    site = forced_rank(model, ANCHORS[kind], 5)
    rewritten = factor.rewrite(model, site)

    def no_svd(*args, **kwargs):
        raise AssertionError("a preview factors nothing")
    monkeypatch.setattr(factor_low_rank, "factor", no_svd)
    preview = factor.preview(model, site)
    assert _skeleton(preview) == _skeleton(rewritten)
    cost_model = cost_model_for(load_target(target))
    assert cost_model.predict(preview).latency_s == cost_model.predict(rewritten).latency_s


def _skeleton(model: Model) -> tuple[list, list]:
    """A model without its weights' values: nodes (op, tensors, attributes) and weights' names, dims and types."""
    return ([(n.op_type, list(n.input), list(n.output), n.attribute) for n in model.nodes],
            [(t.name, list(t.dims), t.data_type) for t in model.graph.initializer])


def test_exact_at_the_matrix_rank_through_find():
    model = matmul_model(_randn(24, 3) @ _randn(3, 16))  # rank 3
    [site] = factor.find(model, energy=1.0)
    assert site.param_dict["rank"] == 3
    result = apply_pass(model, "factor_low_rank", "fc", {"energy": 1.0})
    assert check_equivalence(model, result.model, rtol=1e-5)
    assert result.local_errors[0] < 1e-6


def test_gemm_with_transposed_input_and_no_bias():
    model = _model([helper.make_node("Gemm", ["x", "b"], ["y"], name="fc", transA=1, alpha=2.0)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [24, 3])], ["y"], {"b": _randn(24, 16)})
    assert check_equivalence(model, apply_step(model, forced_rank(model, "fc", 16)).model, rtol=1e-5)
    result = apply_pass(model, "factor_low_rank", "fc", {"rank": 2})
    assert [n.op_type for n in result.model.nodes] == ["Gemm", "Gemm"]
    assert parameters(model.proto) - parameters(result.model.proto) == 24 * 16 - 2 * (24 + 16)


def test_conv_keeps_stride_and_padding_on_the_first_factor():
    model = conv_model(stride=2, pads=1)
    result = apply_pass(model, "factor_low_rank", "pw", {"rank": 4})
    first, second = (n for n in result.model.nodes if n.op_type == "Conv")
    attrs = lambda n: {a.name: helper.get_attribute_value(a) for a in n.attribute}  # noqa: E731
    assert attrs(first)["strides"] == [2, 2] and attrs(first)["pads"] == [1, 1, 1, 1] and len(first.input) == 2
    assert attrs(second).get("strides", [1, 1]) == [1, 1] and len(second.input) == 3  # the bias
    assert result.model.declared_shape("h") == model.declared_shape("h") == ("batch", 20, 6, 6)


# -- reduced rank: what the site reports is what the file shows ------------------------------


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_reduced_rank_saving_and_local_error_are_as_reported(kind, tmp_path):
    model = BUILDERS[kind]()
    calib = calibration(model)
    [site] = factor.find(model, rank=3)
    before, after = reported(site)
    k, n = SHAPES[kind]
    assert (before, after) == (k * n, 3 * (k + n))

    result = apply_pass(model, "factor_low_rank", ANCHORS[kind], {"rank": 3}, calib=calib)

    assert parameters(model.proto) - parameters(result.model.proto) == before - after
    saved = save(result.model, tmp_path / "factored.onnx")
    assert parameters(model.proto) - parameters(onnx.load(str(saved))) == before - after
    tensor = factor.output_tensor(model, site)
    assert tensor == "h"
    reference, changed = tensor_value(model, tensor, calib), tensor_value(result.model, tensor, calib)
    independent = np.linalg.norm(changed - reference) / np.linalg.norm(reference)
    assert result.local_errors[0] == pytest.approx(independent, rel=1e-6)
    assert 0.05 < independent < 1.0  # rank 3 of a random matrix really is lossy


def test_local_error_of_plain_svd_is_the_weight_truncation_error():
    # With white inputs the output error is the weight error: sqrt(sum of dropped s^2 / sum s^2).
    weight = _randn(24, 16)
    model = matmul_model(weight)
    calib = {"x": np.random.default_rng(3).standard_normal((4096, 5, 24)).astype(np.float32)}
    s = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
    result = apply_pass(model, "factor_low_rank", "fc", {"rank": 6}, calib=calib)
    predicted = math.sqrt(1 - energy_kept(s)[5])
    # on h = x·W before the Relu; the driver measures exactly that tensor
    assert result.local_errors[0] == pytest.approx(predicted, rel=0.02)


# -- choosing the rank -----------------------------------------------------------------------


def known_spectrum_model() -> Model:
    """32 x 24, rank 6, with s^2 / sum s^2 = .5 .3 .1 .05 .03 .02 (cumulative .5 .8 .9 .95 .98 1)."""
    r = np.random.default_rng(7)
    u, _ = np.linalg.qr(r.standard_normal((32, 32)))
    v, _ = np.linalg.qr(r.standard_normal((24, 24)))
    s = np.sqrt([0.5, 0.3, 0.1, 0.05, 0.03, 0.02]) * 10
    weight = (u[:, :6] * s) @ v[:, :6].T
    return matmul_model(weight.astype(np.float32))


@pytest.mark.parametrize("params, rank", [
    ({"energy": 0.7}, 2), ({"energy": 0.85}, 3), ({"energy": 0.9}, 3),  # a tie keeps the smaller rank
    ({"energy": 0.93}, 4), ({"energy": 0.99}, 6), ({"energy": 1.0}, 6),
    ({"energy": 0.85, "multiple": 4}, 4), ({"energy": 0.99, "multiple": 8}, 8),
    ({"rank": 5}, 5), ({"rank": 5, "multiple": 4}, 8), ({}, 6),  # default energy 0.99
])
def test_energy_and_multiple_choose_the_rank(params, rank):
    [site] = factor.find(known_spectrum_model(), **params)
    assert site.param_dict["rank"] == rank
    assert reported(site) == (32 * 24, rank * (32 + 24))


def test_rounding_up_past_the_break_even_rank_declines():
    # break-even: r * (32 + 24) < 768 for r <= 13; a multiple of 16 rounds 2 up to 16.
    model = known_spectrum_model()
    assert factor.find(model, energy=0.7, multiple=16) == []
    [declined] = factor.declined(model, energy=0.7, multiple=16)
    assert "rounded up to a multiple of 16" in declined.reason
    assert "16 x (32 + 24) = 896 >= 32 x 24 = 768; a rank of at most 13 would" in declined.reason


def test_choose_rank_caps_at_full_rank():
    energies = energy_kept(np.array([3.0, 2.0, 1.0]))
    assert choose_rank(energies, energy=0.5) == (1, "for 0.5 of the energy")
    assert choose_rank(energies, rank=2, multiple=4)[0] == 3


def test_whitened_refuses_to_fit_without_calibration_data():
    with pytest.raises(PassError, match="calibration"):
        apply_pass(gather_model(), "factor_low_rank", "embed", {"rank": 3, "method": "whitened"})


def test_bad_parameters_are_refused():
    for bad, message in [({"energy": 0}, "energy"), ({"energy": 1.5}, "energy"), ({"multiple": 0}, "multiple"),
                         ({"rank": -1}, "rank"), ({"method": "qr"}, "method")]:
        with pytest.raises(PassError, match=message):
            factor.resolve_params(bad)


# -- where it declines, and why --------------------------------------------------------------


def _declined(model: Model, **params) -> dict[str, str]:
    assert factor.find(model, **params) == []
    return {d.anchor: d.reason for d in factor.declined(model, **params)}


def test_declines_when_nothing_is_gained():
    assert "4 x (4 + 4) = 32 >= 4 x 4 = 16" in _declined(matmul_model(_randn(4, 4)), energy=1.0)["fc"]


def test_declines_run_time_weights():
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="scores"),
                    helper.make_node("Gemm", ["x2", "w"], ["z"], name="fc", transB=1)],
                   [_float_input("x", (3, 8)), _float_input("w", (8, 8)), _float_input("x2", (3, 8))],
                   ["y", "z"], {})
    reasons = _declined(model)
    assert "no constant weight" in reasons["scores"] and "no constant weight" in reasons["fc"]
    left = _model([helper.make_node("MatMul", ["w", "x"], ["y"], name="left")], [_float_input("x", (8, 3))],
                  ["y"], {"w": _randn(8, 8)})
    assert "left operand" in _declined(left)["left"]


def test_declines_convs_that_are_not_1x1_matrices():
    b = GraphBuilder(seed=2)
    y = b.conv("x", 4, 16, 3, name="spatial")
    y = b.conv(y, 16, 16, 1, group=2, name="grouped")
    y = b.conv(y, 16, 16, 3, group=16, name="depthwise")
    reasons = _declined(Model(b.build({"x": (1, 4, 6, 6)}, [y])), rank=1)
    assert "kernel is 3x3" in reasons["spatial"]
    assert "grouped conv (group 2)" in reasons["grouped"]
    assert "depthwise" not in reasons  # not a near miss: passed over silently


def test_declines_gathers_that_are_not_embedding_lookups():
    reasons = _declined(gather_model(table=_randn(16, 40), axis=1), rank=1)
    assert "axis 1" in reasons["embed"]
    shared = _model([helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
                     helper.make_node("MatMul", ["q", "table"], ["y"], name="tied")],
                    [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 6]), _float_input("q", (2, 40))],
                    ["e", "y"], {"table": _randn(40, 16)})
    reasons = _declined(shared, rank=1)
    assert "also read by tied" in reasons["embed"] and "also read by embed" in reasons["tied"]


def test_factors_are_not_factored_again():
    model = matmul_model(_randn(48, 40))
    result = apply_pass(model, "factor_low_rank", params={"rank": 4})
    assert len(result.sites) == 1  # the driver's find-again loop stops: the two factors decline
    reasons = _declined(result.model, rank=1)
    assert set(reasons) == {"fc/low_rank_u", "fc/low_rank_v"}
    assert all("made by factor_low_rank" in r for r in reasons.values())


# -- the demo model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> Model:
    return load(REPO / "models" / "digits_mbv2.onnx")


def test_every_site_of_the_demo_model(digits):
    file_hash = hashlib.sha256((REPO / "models" / "digits_mbv2.onnx").read_bytes()).hexdigest()
    serialized = digits.serialized
    result = apply_pass(digits, "factor_low_rank", params={"energy": 0.9})
    kinds = Counter(digits.node(s.anchor).op_type for s in result.sites)
    assert kinds["Gemm"] == 1 and kinds["Conv"] >= 15
    saved = sum(b - a for b, a in map(reported, result.sites))
    assert parameters(digits.proto) - parameters(result.model.proto) == saved
    onnx.checker.check_model(result.model.proto, full_check=True)
    data = np.load(REPO / "models" / "digits_eval.npz")["input"][:32]
    logits = run(with_batch(result.model, 32), {"input": data})["logits"]
    assert logits.shape == (32, 10) and np.all(np.isfinite(logits))
    assert all(0 < e < 1 for e in result.local_errors)
    assert digits.serialized == serialized
    assert hashlib.sha256((REPO / "models" / "digits_mbv2.onnx").read_bytes()).hexdigest() == file_hash


def test_whitened_beats_plain_svd_on_held_out_data(digits):
    # Fit on the calibration split, judge on the evaluation split: the data-aware factors
    # keep the directions the layer's real inputs use, not the largest weight directions.
    split = accuracy.split_dataset(accuracy.load_npz(REPO / "models" / "digits_eval.npz"), calibration=0.5, seed=0)
    anchor = "/blocks/blocks.8/body/body.7/Conv"
    tensor = digits.node(anchor).output[0]
    errors = {}
    for method in ("svd", "whitened"):
        result = apply_pass(digits, "factor_low_rank", anchor, {"energy": 0.9, "method": method},
                            calib=split.calibration.inputs)
        errors[method] = local_error(digits, result.model, tensor, split.evaluation.inputs)
    assert errors["whitened"] < 0.6 * errors["svd"], errors


def test_energy_profiles_are_computed_once_per_weight_and_follow_its_values(monkeypatch):
    """find() reuses a weight's energy profile on every model that holds the same weight (the search finds on
    every model it reaches), and a weight of the same name with other values gets its own."""
    computed = []
    real = factor_low_rank._energy_profile
    monkeypatch.setattr(factor_low_rank, "_energy_profile", lambda w: computed.append(w.shape) or real(w))
    monkeypatch.setattr(factor_low_rank, "_ENERGIES", {})
    first = matmul_model(_randn(24, 16))
    assert factor.find(first, energy=0.5) == factor.find(first, energy=0.5)
    assert factor.find(Model(first.proto), energy=0.5)  # another model, the same weight
    assert len(computed) == 1
    low = np.outer(_randn(24), _randn(16)).astype(np.float32)  # rank 1: a different profile, a different rank
    [site] = factor.find(matmul_model(low), energy=0.5)
    assert len(computed) == 2 and site.param_dict["rank"] == 1
    assert factor.find(first, energy=0.5)[0].param_dict["rank"] > 1


def test_find_computes_a_weights_spectrum_once_and_again_only_for_changed_bytes(monkeypatch):
    """`find()` runs on every model a search reaches: a weight it has seen keeps its energy profile, and
    a weight whose bytes changed gets its own (the sites stay what a fresh computation gives)."""
    monkeypatch.setattr(factor_low_rank, "_ENERGIES", {})
    real, calls = np.linalg.eigvalsh, []
    monkeypatch.setattr(np.linalg, "eigvalsh", lambda gram: calls.append(gram.shape) or real(gram))
    rewrite = get_pass("factor_low_rank")
    weight = _randn(24, 16)
    model = matmul_model(weight)
    found = rewrite.find(model, rank=2)
    assert calls == [(16, 16)] and found
    rewrite.find(matmul_model(_randn(24, 16)), rank=2)  # other bytes: computed
    assert len(calls) == 2
    assert [s.summary for s in rewrite.find(matmul_model(weight.copy()), rank=2)] == [s.summary for s in found]
    assert len(calls) == 2  # the same bytes: no new eigenvalues
    monkeypatch.setattr(factor_low_rank, "_ENERGIES", {})  # a fresh computation agrees
    assert [s.summary for s in rewrite.find(model, rank=2)] == [s.summary for s in found]
    assert len(calls) == 3
