"""The simulated NPU against npu-target.md: its sanity figures and hand-computed cycles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from onnx_tailor.costmodel import TargetError, load_target, simulate
from onnx_tailor.costmodel.kernels import group_kernels
from onnx_tailor.ir import Model
from onnx_tailor.passes.canonicalize import canonicalize
from tests.graphs import GraphBuilder

P32 = load_target("npu-p32")


def _model(builder: GraphBuilder, inputs, outputs) -> Model:
    return Model(canonicalize(builder.build(inputs, outputs)))


def _block(hw, ci, ce, co, stride, fused) -> Model:
    """MobileNetV2 block without residual; `fused`: expand+depthwise replaced by one 3x3 conv."""
    b = GraphBuilder()
    if fused:
        h = b.relu6(b.conv("x", ci, ce, 3, stride))
    else:
        h = b.relu6(b.conv(b.relu6(b.conv("x", ci, ce, 1)), ce, ce, 3, stride, group=ce))
    return _model(b, {"x": (1, ci, hw, hw)}, [b.conv(h, ce, co, 1)])


def test_sanity_early_block_fusion_cuts_cycles_by_well_over_half():
    original, fused = simulate(_block(112, 16, 96, 24, 2, False), P32), simulate(_block(112, 16, 96, 24, 2, True), P32)
    expand, depthwise = original.kernels[0], original.kernels[1]
    assert 112 * 112 * 96 > P32.sram_bytes / 2  # 1.2 MB: does not fit in half the SRAM
    assert expand.spilled and expand.bound == "memory"
    assert depthwise.unit == "vector" and depthwise.compute_cycles == 56 * 56 * 9 * math.ceil(96 / 8)
    assert fused.total_cycles < 0.5 * original.total_cycles


def test_sanity_late_block_fusion_is_slower():
    original, fused = simulate(_block(7, 160, 960, 160, 1, False), P32), simulate(_block(7, 160, 960, 160, 1, True), P32)
    fused_conv = fused.kernels[0]
    # 160 * 960 * 9 = 1.38 MB of int8 weights, read once per op, beside the bias, the Clip bounds and the input x
    assert fused_conv.dram_bytes == 160 * 960 * 9 * P32.element_bytes + 960 + 2 + 160 * 7 * 7
    assert fused_conv.bound == "memory"
    assert fused.total_cycles > original.total_cycles


def test_block_cycles_match_hand_computation():
    # 1x16x28x28 input (graph input: read from DRAM), expand 1x1 16->40 + ReLU6 (fused),
    # depthwise 3x3 stride 1 + ReLU6 (fused), project 1x1 40->16, residual Add. Nothing spills
    # (largest tensor 40*28*28 = 31 KB < 1 MiB). P=32, V=8, 16 B/cycle, 500 cycles dispatch.
    b = GraphBuilder()
    h = b.relu6(b.conv("x", 16, 40, 1))
    h = b.relu6(b.conv(h, 40, 40, 3, 1, group=40))
    y = b.node("Add", [b.conv(h, 40, 16, 1), "x"])
    sim = simulate(_model(b, {"x": (1, 16, 28, 28)}, [y]), P32)
    expand, depthwise, project, add = sim.kernels
    hw = 28 * 28
    # expand: compute hw * 1 * ceil(16/32) * ceil(40/32); DRAM: x (12544 B) + weights 16*40 + bias 40 + clip bounds 2
    assert expand.compute_cycles == hw * 1 * 2
    assert expand.dram_bytes == 16 * hw + 16 * 40 + 40 + 2
    assert expand.cycles == max(hw * 2, expand.dram_bytes / 16) + 500
    # depthwise: hw * 9 * ceil(40/8); weights 40*9 + bias 40 + clip bounds 2, activations on chip
    assert depthwise.compute_cycles == hw * 9 * 5
    assert depthwise.dram_bytes == 40 * 9 + 40 + 2 and depthwise.cycles == hw * 9 * 5 + 500
    # project: hw * ceil(40/32) * ceil(16/32); weights 40*16 + bias 16
    assert project.compute_cycles == hw * 2 * 1 and project.dram_bytes == 40 * 16 + 16
    assert project.utilization(32) == pytest.approx(hw * 40 * 16 / ((hw * 2 + 500) * 32 * 32))
    # residual add on the vector unit: ceil(16*hw / 8); reads x again from DRAM, writes the graph output
    assert add.compute_cycles == 16 * hw // 8
    assert add.dram_bytes == 16 * hw + 16 * hw
    assert sim.total_cycles == sum(k.cycles for k in (expand, depthwise, project, add))
    assert sim.latency_s == pytest.approx(sim.total_cycles / 1e9)


def test_to_dict_is_the_simulation_as_json():
    b = GraphBuilder()
    y = b.node("Reshape", [b.relu6(b.conv("x", 16, 40, 1)), b.const(np.array([1, -1]))])
    sim = simulate(_model(b, {"x": (1, 16, 28, 28)}, [y]), P32)
    conv, reshape = sim.kernels
    data = json.loads(json.dumps(sim.to_dict()))
    assert [data["target"], data["cycles"], data["latency_ms"]] == ["npu-p32", sim.total_cycles, sim.latency_s * 1e3]
    assert data["kernels"][0] == {
        "kernel": conv.kernel.name, "ops": ["Conv", "Clip"], "unit": "mac", "compute_cycles": 28 * 28 * 2,
        "memory_cycles": round(conv.dram_bytes / 16, 1), "cycles": round(conv.cycles, 1), "bound": "memory",
        "dram_bytes": conv.dram_bytes, "mac_utilization": conv.utilization(32), "spilled": []}
    assert data["kernels"][1]["unit"] == "free" and data["kernels"][1]["mac_utilization"] is None
    assert "kernels" not in sim.to_dict(per_kernel=False)


def test_channel_staircase_rewards_multiples_of_p():
    def cycles(channels):
        b = GraphBuilder()
        return simulate(_model(b, {"x": (1, 32, 14, 14)}, [b.conv("x", 32, channels, 1)]), P32).kernels[0].compute_cycles
    assert cycles(33) == 2 * cycles(32) and cycles(64) == cycles(33)


def test_fusion_rules():
    b = GraphBuilder()
    shared = b.conv("x", 8, 8, 1, name="shared")  # two readers: nothing fuses into it
    left = b.node("Relu", [shared])
    right = b.node("Sigmoid", [shared])
    hs = b.hardswish_decomposed(b.conv(left, 8, 8, 1, name="hs_conv"))  # spelled out: fuses as one activation
    gated = b.node("Mul", [hs, right])  # Mul by a tensor, not a constant: its own kernel
    kernels = {k.name: k for k in group_kernels(_model(b, {"x": (1, 8, 4, 4)}, [gated]),
                                                P32.fusable_activations)}
    assert kernels["shared"].fused == ()
    assert kernels["hs_conv"].fused == ("Add", "Clip", "Mul", "Div")
    assert sum(1 for k in kernels.values() if k.op_type == "Mul") == 1


def test_an_activation_chain_fuses_as_one_activation():
    b = GraphBuilder()
    h = b.conv("x", 8, 8, 1, name="scaled")  # a scale and shift left over (Div and Add by constants), then HardSwish
    h = b.hardswish_decomposed(b.node("Add", [b.node("Div", [h, b.const(np.float32(2.0))]), b.const(np.float32(0.5))]))
    h = b.swish(b.conv(h, 8, 8, 1, name="swish"), beta=1.0)  # x * Sigmoid(1.0 * x), as Paddle exports swish
    h = b.gelu_erf(b.conv(h, 8, 8, 1, name="gelu"))
    model = Model(b.build({"x": (1, 8, 4, 4)}, [h]))  # as written: canonicalization could fold the scale away
    kernels = {k.name: k for k in group_kernels(model, P32.fusable_activations)}
    assert kernels["scaled"].fused == ("Div", "Add", "Add", "Clip", "Mul", "Div")
    assert kernels["swish"].fused == ("Mul", "Sigmoid", "Mul")
    # GELU is not one of npu-p32's fusable activations: its five ops run as kernels of their own
    assert kernels["gelu"].fused == () and len(kernels) == 3 + 5
    sim = simulate(model, P32)
    assert [k.kernel.name for k in sim.kernels if k.unit == "mac"] == ["scaled", "swish", "gelu"]


def test_reshape_is_free_and_unmodelled_ops_are_warned_about():
    b = GraphBuilder()
    y = b.node("Reshape", [b.conv("x", 4, 4, 1), b.const(np.array([1, -1]))])
    y = b.node("ReduceMax", [y], axes=[1], keepdims=1)
    sim = simulate(_model(b, {"x": (1, 4, 4, 4)}, [y]), P32)
    free = [k for k in sim.kernels if k.unit == "free"]
    assert len(free) == 1 and free[0].cycles == 0
    assert any("ReduceMax" in w for w in sim.warnings)


@pytest.mark.parametrize("profile,message", [
    ("{not json", "not valid JSON"),
    ('{"name": "x", "kind": "npu"}', "needs 'parallelism'"),
    ('{"name": "x", "kind": "gpu"}', "kind 'gpu'"),
    ('{"name": "x", "kind": "ort", "threads": -1}', "'threads' must be from 1 to 1024, got -1"),
    ('{"name": "x", "kind": "ort", "speed": 3}', "unknown profile field 'speed'"),
])
def test_malformed_profiles_are_one_line_errors(tmp_path, profile, message):
    path = tmp_path / "profile.json"
    path.write_text(profile)
    with pytest.raises(TargetError, match=message):
        load_target(path)


def test_unknown_target_names_the_builtins():
    with pytest.raises(TargetError, match="npu-p16, npu-p32, npu-p64"):
        load_target("tpu-v9")


def test_user_profile_from_a_path(tmp_path):
    raw = json.loads((load_target("npu-p32").source).read_text())
    raw.update(name="npu-p8", parallelism=8, vector_lanes=2)
    path = tmp_path / "npu-p8.json"
    path.write_text(json.dumps(raw))
    target = load_target(path)
    assert target.parallelism == 8 and target.simulated
