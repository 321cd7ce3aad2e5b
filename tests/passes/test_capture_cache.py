"""Capture once, fit many: cone digests, the tensor cache, and that caching changes no byte of a result.

The cache keys a tensor by its cone digest and the data it ran on; these tests
check the digests move exactly with what a rewrite changed, that cached
values are the bytes a fresh run gives, that the byte budget holds (and the
reference's tensors are the last to go), and that `optimize` writes the
same recipe and model with the cache as without it.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest

from onnx_tailor.analysis import find_ibn_blocks
from onnx_tailor.ir import Model, large, seeded_samples, session
from onnx_tailor.ir.cones import cone_digests
from onnx_tailor.ir.runtime import exposing_session, representative_inputs
from onnx_tailor.passes import apply_pass
from onnx_tailor.passes.canonicalize import canonicalize, load
from onnx_tailor.passes.capture import capture, capture_fit
from onnx_tailor.passes.tensor_cache import TensorCache, using
from onnx_tailor.search import optimize
from tests.conftest import DIGITS, MODELS
from tests.graphs import tiny_mobilenet
from tests.test_reliability_files import matmul_model


@pytest.fixture(scope="module")
def tiny() -> Model:
    return Model(canonicalize(tiny_mobilenet()))


@pytest.fixture(scope="module")
def fused_last(tiny):
    """`tiny` with its last IBN block fused (exactly composed), and the names around that block."""
    block = find_ibn_blocks(tiny)[-1]
    rewritten = apply_pass(tiny, "fuse_ibn_expansion", block.expand, {"init": "compose"}).model
    return rewritten, block


def _activations(model: Model) -> list[str]:
    return [o for n in model.nodes for o in n.output if o]


def test_a_rewrite_changes_the_digests_downstream_of_its_region_only(tiny, fused_last):
    rewritten, block = fused_last
    before, after = cone_digests(tiny), cone_digests(rewritten)
    upstream = block.input
    assert after[upstream] == before[upstream]  # nothing it reads changed
    every_upstream = [t for t in _activations(tiny) if t in after and tiny.producer(t) is not None
                      and _is_upstream(tiny, t, upstream)]
    assert every_upstream and all(after[t] == before[t] for t in every_upstream)
    output = tiny.graph.output[0].name
    assert after[output] != before[output]  # downstream of the fused block: a different value


def _is_upstream(model: Model, tensor: str, of: str) -> bool:
    seen, pending = set(), [of]
    while pending:
        name = pending.pop()
        if name == tensor:
            return True
        producer = model.producer(name)
        if producer is not None and name not in seen:
            seen.add(name)
            pending.extend(t for t in producer.input if t)
    return False


def test_names_do_not_enter_a_digest_but_weights_do(tiny):
    proto = tiny.proto.__class__()
    proto.CopyFrom(tiny.proto)
    for index, node in enumerate(proto.graph.node):
        node.name = f"renamed_{index}"
    renamed = Model(proto)
    assert cone_digests(renamed) == cone_digests(tiny)
    weight = next(t for t in proto.graph.initializer if len(t.dims) == 4)
    values = np.frombuffer(weight.raw_data, np.float32).copy()
    values[0] += 1.0
    weight.raw_data = values.tobytes()
    changed = cone_digests(Model(proto))
    reader = next(n for n in proto.graph.node if weight.name in n.input)
    assert changed[reader.output[0]] != cone_digests(tiny)[reader.output[0]]


def test_cached_values_are_the_bytes_of_a_fresh_run_and_cost_no_second_run(tiny, fused_last):
    rewritten, block = fused_last
    calib = seeded_samples(tiny, 6)
    tensors = [block.input, tiny.graph.output[0].name]
    fresh = capture(tiny, tensors, calib)
    cache = TensorCache(1 << 30)
    with using(cache):
        first = capture(tiny, tensors, calib)
        runs = cache.stats.runs
        again = capture(tiny, tensors, calib)
        assert cache.stats.runs == runs == 1
        # The rewritten model computes the block input as the original does: served from the cache.
        upstream = capture(rewritten, [block.input], calib)
        assert cache.stats.runs == 1
        # Its output is downstream of the change: computed, and different.
        changed = capture(rewritten, [rewritten.graph.output[0].name], calib)
        assert cache.stats.runs == 2
    for name in tensors:
        assert fresh[name].tobytes() == first[name].tobytes() == again[name].tobytes()
    assert upstream[block.input].tobytes() == fresh[block.input].tobytes()
    assert not np.array_equal(changed[rewritten.graph.output[0].name], fresh[tiny.graph.output[0].name])
    assert not first[block.input].flags.writeable  # shared: nobody may edit a cached value


@pytest.mark.parametrize("samples", [6, None])
def test_a_miss_below_cached_tensors_runs_their_cut_and_gives_the_bytes_of_a_whole_run(tiny, fused_last, samples):
    """The rewritten model's output is downstream of its change, its block's input upstream and cached: the
    run that computes the output starts there (`ir.cut`), on calibration samples or on one batch."""
    rewritten, block = fused_last
    calib = None if samples is None else seeded_samples(tiny, samples)
    output = rewritten.graph.output[0].name
    fresh = capture(rewritten, [output], calib)  # no cache: the whole model from its inputs
    cache = TensorCache(1 << 30)
    with using(cache):
        capture(tiny, [block.input], calib)
        assert (cache.stats.runs, cache.stats.cut_runs) == (1, 0)  # nothing cached yet: the whole model
        got = capture(rewritten, [output], calib)
        assert (cache.stats.runs, cache.stats.cut_runs) == (2, 1)
    assert got[output].tobytes() == fresh[output].tobytes()


def test_other_data_is_another_key(tiny):
    cache = TensorCache(1 << 30)
    name = tiny.graph.output[0].name
    with using(cache):
        a = capture(tiny, [name], seeded_samples(tiny, 4, seed=1))
        b = capture(tiny, [name], seeded_samples(tiny, 4, seed=2))
    assert cache.stats.runs == 2 and not np.array_equal(a[name], b[name])


def test_over_the_budget_it_recomputes_and_reference_tensors_go_last(tiny, fused_last):
    rewritten, block = fused_last
    calib = seeded_samples(tiny, 6)
    name = block.input
    size = capture(tiny, [name], calib)[name].nbytes
    # Room for one such tensor: the reference's (pinned) one stays while ordinary ones come and go.
    cache = TensorCache(size + size // 2)
    with using(cache):
        inputs, aimed = capture_fit(rewritten, [block.input], [block.input], calib, reference=tiny)
        assert cache.bytes <= cache.budget_bytes
        other = [t for t in _activations(tiny) if t != name][-1]
        capture(rewritten, [other], calib)  # an ordinary tensor: it may not push the pinned one out
        runs = cache.stats.runs
        capture(tiny, [name], calib)
        assert cache.stats.runs == runs  # still there
        assert cache.bytes <= cache.budget_bytes
    small = TensorCache(size // 2)  # nothing fits: every capture runs, and the values are unchanged
    with using(small):
        first = capture(tiny, [name], calib)
        second = capture(tiny, [name], calib)
    assert small.stats.runs == 2 and small.stats.refused >= 2 and small.bytes == 0
    assert first[name].tobytes() == second[name].tobytes() == inputs[name].tobytes() == aimed[name].tobytes()


def _result_bytes(result) -> tuple[str, str]:
    recipe = json.dumps(result.recipe.to_dict(), sort_keys=True).encode()
    return hashlib.sha256(recipe).hexdigest(), result.model.content_hash


def test_optimize_writes_the_same_bytes_with_the_cache_as_without_it_on_the_tiny_model(tiny):
    options = dict(target="npu-p32", data="random", metric="cosine", max_drop="0.05",
                   passes=["fuse_ibn_expansion", "densify_depthwise", "pad_channels"])
    without = optimize(tiny, cache_bytes=0, **options)
    cached = optimize(tiny, **options)
    assert without.recipe.steps and _result_bytes(cached) == _result_bytes(without)


def test_optimize_writes_the_same_bytes_with_the_cache_as_without_it_on_digits():
    model = load(DIGITS.path)
    # fp32 judging, one lossy pass and no refinement keep it short: the cache serves the least-squares
    # fits' captures, which neither int8 judging nor the gradient steps change
    options = dict(target="npu-p32", data=str(MODELS / "digits_eval.npz"), precision="fp32",
                   passes=["fuse_ibn_expansion"], pass_params={"fuse_ibn_expansion": {"refine": 0}},
                   time_budget=None)
    without = optimize(model, cache_bytes=0, **options)
    cached = optimize(model, **options)
    assert without.recipe.steps and _result_bytes(cached) == _result_bytes(without)


def test_a_capture_hands_onnxruntime_the_weights_without_a_copy(tmp_path):
    """The exposed model is the light form (its large weights are references to the model's own tensors,
    a few KB of graph instead of the model's 2 MiB), and it computes the very bytes that a whole copy of
    the model with the same outputs added computes."""
    model = Model(canonicalize(matmul_model(4096, 64, weights=2)))
    tensors = ["y0", "sum1", "c1"]
    proto, sess = exposing_session(model, tensors)
    assert proto.ByteSize() < large.HOLD_FROM_BYTES < large.weight_bytes(model.proto)
    feeds = representative_inputs(model)  # what capture runs on without data
    whole = onnx.ModelProto()
    whole.CopyFrom(model.proto)
    whole.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors)
    expected = dict(zip(tensors, session(model.with_proto(whole)).run(tensors, feeds)))
    for name, value in zip(tensors, sess.run(tensors, feeds)):
        np.testing.assert_array_equal(value, expected[name])
    for name, value in capture(model, tensors, None).items():
        np.testing.assert_array_equal(value, expected[name])


def test_a_weight_numpy_cannot_hand_onnxruntime_goes_inline():
    """bfloat16 (like float8 and int4) has no numpy form onnxruntime takes: that held tensor is written
    back into the light form, and the capture still computes what the model does."""
    weight = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    bf16 = onnx.helper.make_tensor("w", onnx.TensorProto.BFLOAT16, weight.shape,
                                   (weight.view(np.uint32) >> 16).astype(np.uint16).tobytes(), raw=True)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Cast", ["w"], ["wf"], name="cast", to=onnx.TensorProto.FLOAT),
         onnx.helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")], "bf16",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 256])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 256])], [bf16])
    model = Model(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    assert large.lighten(model.proto).held  # 128 KiB: held on the light path
    proto, sess = exposing_session(model, ["wf"])
    [value] = sess.run(["wf"], {"x": np.zeros((1, 256), np.float32)})
    truncated = ((weight.view(np.uint32) >> 16) << 16).view(np.float32)
    np.testing.assert_array_equal(value, truncated)
