"""MACs and parameters of recurrent and control-flow nodes, and the nodes inside subgraphs."""

from __future__ import annotations

import pytest

from onnx_tailor.analysis import analyze, memory_summary
from onnx_tailor.ir import Model
from onnx_tailor.passes.canonicalize import canonicalize
from tests.graphs_beyond_float import guarded_if_model, if_model, loop_model, recurrent, scan_model


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_recurrent_macs_are_gate_matmuls_per_time_step(op, gates, direction):
    steps, batch, inputs, hidden = 5, 2, 24, 40
    directions = 2 if direction == "bidirectional" else 1
    report = analyze(Model(canonicalize(recurrent(op, steps, batch, inputs, hidden, direction))))
    # each step and direction: (batch x inputs) @ (inputs x gates*hidden) + (batch x hidden) @ (hidden x gates*hidden)
    assert report.macs == steps * directions * (batch * inputs * gates * hidden + batch * hidden * gates * hidden)
    weights = directions * gates * hidden * (inputs + hidden + 2)  # W, R and both biases
    assert report.params == weights and report.param_bytes == 4 * weights


def test_if_counts_its_costlier_branch_and_every_branch_weight():
    model = Model(canonicalize(if_model()))
    report = analyze(model)
    macs = {n.name: n.macs for n in report.nodes}
    assert macs["conv"] == 8 * 8 * 16 * 8 * 9
    then_macs, else_macs = 8 * 8 * 32 * 16 * 9, 8 * 8 * 32 * 16
    assert macs["if"] == max(then_macs, else_macs)
    assert report.macs == macs["conv"] + then_macs
    # the branches' Constant-node weights are parameters of the model and of the If
    branch_weights = 32 * 16 * 9 + 32 * 16
    assert next(n for n in report.nodes if n.name == "if").params == branch_weights
    assert report.params == 16 * 8 * 9 + branch_weights == memory_summary(model).params
    assert report.op_histogram == {"Conv": 3, "Constant": 2, "If": 1}  # the branches' nodes are seen
    assert report.warnings == []


def test_loop_counts_its_body_times_a_constant_trip_count():
    body = 8 * 8 * 16 * 16 * 9
    report = analyze(Model(canonicalize(loop_model(trips=4))))
    assert report.macs == 4 * body
    assert report.params == 16 * 16 * 9
    assert report.op_histogram["Conv"] == 1 and report.warnings == []


def test_loop_with_a_run_time_trip_count_counts_once_and_says_so():
    report = analyze(Model(canonicalize(loop_model(trips=None))))
    assert report.macs == 8 * 8 * 16 * 16 * 9
    assert report.warnings == ["Loop loop: trip count not constant; costed as one iteration"]


def test_a_branch_invalid_at_these_shapes_counts_nothing_and_says_so():
    # k = 4: the then branch (Squeeze of axis 1) cannot run; the else branch is a 1x4 @ 4x8 MatMul
    report = analyze(Model(canonicalize(guarded_if_model()), {"x": (1, 4)}))
    assert report.macs == 4 * 8
    assert report.warnings == ["guard (If): the shapes inside then_branch are unknown; its nodes count no MACs"]


def test_scan_counts_its_body_once_per_slice():
    report = analyze(Model(canonicalize(scan_model(steps=6))))
    assert report.macs == 6 * 16 * 32 and report.params == 16 * 32 and report.warnings == []


def test_a_while_loop_counts_once_and_says_so():
    # torch exports `while` as a Loop whose trip count is int64 max; only its condition ends it
    report = analyze(Model(canonicalize(loop_model(trips=2**63 - 1))))
    assert report.macs == 8 * 8 * 16 * 16 * 9
    assert report.warnings == ["Loop loop: no trip count (a while loop); costed as one iteration"]
