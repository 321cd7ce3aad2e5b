"""Running a cut of a model (`ir.cut`): the nodes between known tensors and wanted ones give the very bytes
the whole model gives, batch by batch, wherever the batch sits."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnx_tailor.analysis import find_ibn_blocks
from onnx_tailor.ir import Model, run_samples, seeded_samples
from onnx_tailor.ir.cut import cut_inputs, run_cut
from onnx_tailor.ir.runtime import exposing_session, representative_inputs
from onnx_tailor.passes.canonicalize import canonicalize
from tests.graphs import tiny_mobilenet


def _whole(model: Model, tensors: list[str], samples) -> tuple[dict, dict]:
    proto, sess = exposing_session(model, tensors)
    names = [o.name for o in sess.get_outputs()]
    return run_samples(model.with_proto(proto), samples, runner=lambda b: dict(zip(names, sess.run(names, b))))


def _transposed(batch: int | str) -> Model:
    """x [B, 4] -> Transpose -> t [4, B] -> Tanh -> MatMul -> u [4, B] -> Transpose -> y [B, 4]: the batch
    of the inner tensors on axis 1."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.linspace(-1, 1, 16).astype(np.float32))
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t", perm=[1, 0]),
             helper.make_node("Tanh", ["t"], ["h"], name="h"),
             helper.make_node("MatMul", ["w", "h"], ["u"], name="u"),
             helper.make_node("Transpose", ["u"], ["y"], name="y", perm=[1, 0])]
    graph = helper.make_graph(nodes, "transposed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return Model(canonicalize(proto))


def test_the_cut_stops_at_the_nearest_known_tensors_and_keeps_what_is_wanted():
    model = _transposed("N")
    nodes, starts = cut_inputs(model, ["y"], lambda t: t in {"t", "h"})
    assert [n.output[0] for n in nodes] == ["u", "y"] and starts == ["h"]
    nodes, starts = cut_inputs(model, ["h", "y"], lambda t: t in {"t", "h"})  # wanted: computed even if known
    assert [n.output[0] for n in nodes] == ["h", "u", "y"] and starts == ["t"]
    nodes, starts = cut_inputs(model, ["y"], lambda t: False)
    assert len(nodes) == 4 and starts == ["x"]


@pytest.mark.parametrize("batch", [2, "N"])
def test_a_cut_fed_a_batch_on_axis_1_gives_the_bytes_of_the_whole_run(batch):
    """Fixed batch 2 on 5 samples (the last run padded) and a free batch: the cut from `h` ([4, B]) runs as
    the whole model ran, and joins its outputs along their own axes."""
    model = _transposed(batch)
    samples = seeded_samples(model, 5, seed=3)
    whole, axes = _whole(model, ["h", "u", "y"], samples)
    assert axes["h"] == 1 and whole["h"].shape == (4, 5)
    nodes, starts = cut_inputs(model, ["u", "y"], lambda t: t == "h")
    got, got_axes = run_cut(model, ["u", "y"], nodes, {"h": whole["h"]}, {"h": 1}, "test data")
    assert got_axes["u"] == 1 and got_axes["y"] == 0
    for name in ("u", "y"):
        assert got[name].tobytes() == whole[name].tobytes()


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_a_cut_inside_a_network_gives_the_bytes_of_the_whole_run(dynamic_batch):
    model = Model(canonicalize(tiny_mobilenet(dynamic_batch=dynamic_batch)))
    samples = seeded_samples(model, 3)
    inner = [o for n in model.nodes for o in n.output if o]
    middle, wanted = find_ibn_blocks(model)[-1].input, [inner[-3], model.graph.output[0].name]
    whole, axes = _whole(model, [middle, *wanted], samples)
    nodes, starts = cut_inputs(model, wanted, lambda t: t == middle)
    assert starts == [middle] and len(nodes) < len(model.nodes) // 2
    got, _ = run_cut(model, wanted, nodes, {middle: whole[middle]}, {middle: axes[middle]}, "test data")
    for name in wanted:
        assert got[name].tobytes() == whole[name].tobytes()
    # One batch of feeds, as a capture without data runs: fed one run's value, the same bytes as that run.
    feeds = representative_inputs(model)
    proto, sess = exposing_session(model, [middle, *wanted])
    once = dict(zip([middle, *wanted], sess.run([middle, *wanted], feeds)))
    got, no_axes = run_cut(model, wanted, nodes, {middle: once[middle]}, None, "test data")
    assert no_axes is None and all(got[name].tobytes() == once[name].tobytes() for name in wanted)


def test_a_cut_reaching_a_graph_input_takes_it_in_samples_layout():
    model = _transposed(2)
    samples = seeded_samples(model, 3, seed=1)
    whole, _ = _whole(model, ["y"], samples)
    nodes, starts = cut_inputs(model, ["y"], lambda t: False)
    got, _ = run_cut(model, ["y"], nodes, {"x": samples["x"]}, {}, "test data")
    assert starts == ["x"] and got["y"].tobytes() == whole["y"].tobytes()
