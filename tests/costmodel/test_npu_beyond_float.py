"""The simulated NPU on quantized, recurrent and control-flow models (npu-target.md, its last section)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnx_tailor.costmodel import load_target, simulate
from onnx_tailor.ir import Model
from onnx_tailor.passes.canonicalize import canonicalize
from tests.graphs import GraphBuilder
from tests.graphs_beyond_float import conv_net, guarded_if_model, if_model, loop_model, quantized, recurrent, scan_model

P32 = load_target("npu-p32")


def _sim(proto):
    return simulate(Model(canonicalize(proto)), P32)


def _mac_kernels(simulation):
    return [k for k in simulation.kernels if k.unit == "mac"]


@pytest.fixture(scope="module")
def float_and_quantized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantized")
    float_model = conv_net()
    forms = ("dynamic", "qdq", "qoperator")
    return _sim(float_model), {how: _sim(quantized(float_model, how, folder)) for how in forms}


@pytest.mark.parametrize("how", ["qdq", "qoperator"])
def test_quantized_convs_and_matmuls_cost_what_their_float_form_does(float_and_quantized, how):
    reference, forms = float_and_quantized
    simulation = forms[how]
    assert not simulation.warnings  # nothing unmodelled
    ours, theirs = _mac_kernels(simulation), _mac_kernels(reference)
    assert [k.kernel.kind for k in ours] == [k.kernel.kind for k in theirs] == ["conv", "conv", "matmul"]
    assert [k.compute_cycles for k in ours] == [k.compute_cycles for k in theirs]
    assert [k.macs for k in ours] == [k.macs for k in theirs]
    # int8 weights move as many bytes as the float weights do at the NPU's element size;
    # Quantize/DequantizeLinear and the scales and zero points are the format, not work
    assert [k.dram_bytes for k in ours] == [k.dram_bytes for k in theirs]
    assert simulation.total_cycles == reference.total_cycles


def test_dynamic_quantization_runs_its_integer_ops_on_the_mac_array(float_and_quantized):
    reference, forms = float_and_quantized
    simulation = forms["dynamic"]
    assert not simulation.warnings
    ours = _mac_kernels(simulation)
    assert [k.kernel.op_type for k in ours] == ["ConvInteger", "ConvInteger", "MatMulInteger"]
    assert [k.compute_cycles for k in ours] == [k.compute_cycles for k in _mac_kernels(reference)]
    quantize = [k for k in simulation.kernels if k.kernel.op_type == "DynamicQuantizeLinear"]
    assert len(quantize) == 3 and all(k.unit == "vector" for k in quantize)
    first = quantize[0]  # the graph input 1x3x8x8: ceil(192 / V) on the vector unit
    assert first.compute_cycles == math.ceil(3 * 8 * 8 / P32.vector_lanes)


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_op_is_its_gate_matmuls_per_time_step(op, gates):
    steps, batch, inputs, hidden, directions = 5, 2, 24, 40, 2
    rnn = _sim(recurrent(op, steps, batch, inputs, hidden, "bidirectional")).kernels[0]

    def matmul_cycles(k):  # the page's MatMul rule, as the simulator costs a lone MatMul
        b = GraphBuilder()
        y = b.node("MatMul", ["x", b.const(np.ones((k, gates * hidden), np.float32))])
        return _sim(b.build({"x": (batch, k)}, [y])).kernels[0].compute_cycles

    gate_arithmetic = math.ceil(batch * gates * hidden / P32.vector_lanes)
    per_step = matmul_cycles(inputs) + matmul_cycles(hidden) + gate_arithmetic
    assert rnn.unit == "mac" and rnn.compute_cycles == steps * directions * per_step
    assert rnn.macs == steps * directions * batch * gates * hidden * (inputs + hidden)
    weights = directions * gates * hidden * (inputs + hidden + 2)
    assert rnn.dram_bytes == weights + steps * batch * inputs + steps * directions * batch * hidden  # + X in, Y out
    assert rnn.cycles == max(rnn.compute_cycles, rnn.dram_bytes / P32.dram_bytes_per_cycle) + P32.dispatch_cycles


def _branch_alone(k: int) -> float:
    """If's branch as a model of its own: t (its outer input) -> Conv kxk 16->32."""
    b = GraphBuilder()
    y = b.conv("t", 16, 32, k, bias=False)
    return _sim(b.build({"t": (1, 16, 8, 8)}, [y])).total_cycles


def test_if_costs_its_costlier_branch():
    simulation = _sim(if_model())
    conv, choose = simulation.kernels
    assert choose.unit == "control" and not simulation.warnings
    assert _branch_alone(3) > _branch_alone(1)
    assert choose.cycles == _branch_alone(3)
    assert choose.macs == 8 * 8 * 32 * 16 * 9
    assert "t" in conv.kernel.outputs  # read inside the branches: the conv's output leaves its kernel


def test_loop_costs_its_body_times_its_trip_count():
    body = simulate(Model(canonicalize(loop_model(trips=1))), P32).total_cycles
    assert body > P32.dispatch_cycles
    assert _sim(loop_model(trips=4)).total_cycles == 4 * body
    once = _sim(loop_model(trips=None))
    assert once.total_cycles == body
    assert once.warnings == ["Loop loop: trip count not constant; costed as one iteration"]


def test_a_branch_invalid_at_these_shapes_costs_nothing_and_says_so():
    simulation = simulate(Model(canonicalize(guarded_if_model()), {"x": (1, 4)}), P32)
    guard = next(k for k in simulation.kernels if k.kernel.name == "guard")
    assert guard.macs == 4 * 8 and guard.compute_cycles == 1  # the else branch: 1 * ceil(4/P) * ceil(8/P)
    assert "guard (If): the shapes inside then_branch are unknown; its nodes cost nothing" in simulation.warnings


def test_scan_costs_its_body_once_per_slice():
    one = _sim(scan_model(steps=1)).total_cycles
    assert _sim(scan_model(steps=6)).total_cycles == 6 * one
