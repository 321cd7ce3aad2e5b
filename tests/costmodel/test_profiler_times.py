"""Kernel times read from onnxruntime's profiler, each kernel measured inside a small network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnx_tailor.cli import main
from onnx_tailor.costmodel import load_target, read_measurements
from onnx_tailor.costmodel import profile_on_device
from onnx_tailor.costmodel.measure import (MIN_KERNEL_S, OVERHEAD_ID, PROFILE_RUNS, PROFILE_WARMUP, measure_entries,
                                           session_options)
from onnx_tailor.costmodel.profile import measurements_from_profiles
from onnx_tailor.costmodel.profiler import (ProfileError, absorbing_op_types, kernel_time, profile_network,
                                            profiler_bias_s, read_profile, robust_mean)
from onnx_tailor.costmodel.sweep import CONTEXT_PREFIX, SweepEntry, read_networks, write_sweep
from onnx_tailor.ir import Model, seeded_inputs

CPU = load_target("cpu-ort")


def _event(name, op_type, dur):
    return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "ph": "X", "args": {"op_name": op_type}}


def _optimized_graph(nodes):
    """An optimized graph as onnxruntime saves it: (op_type, name, inputs, outputs) per node; x in, y out."""
    return helper.make_graph([helper.make_node(op, ins, outs, name=name) for op, name, ins, outs in nodes], "opt",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])


# The shape onnxruntime gives a pool between two blocked-layout convs: reorders at the network's input and
# output (the boundary's), and a pair around the pool (the pool's: a network pays them too).
POOL_GRAPH = _optimized_graph([
    ("ReorderInput", "ReorderInput", ["x"], ["r0"]),
    ("Conv", "ctx_pre_x_nchwc", ["r0"], ["r1"]),
    ("ReorderOutput", "ReorderOutput_token_6", ["r1"], ["ctx_pre_x"]),
    ("MaxPool", "op", ["ctx_pre_x"], ["t3"]),
    ("ReorderInput", "ReorderInput_token_4", ["t3"], ["r3"]),
    ("Conv", "ctx_post_nchwc", ["r3"], ["r5"]),
    ("ReorderOutput", "ReorderOutput", ["r5"], ["y"]),
])


def _trace(durations: dict[tuple[str, str], list[int]]):
    runs = len(next(iter(durations.values())))
    events = [{"cat": "Session", "name": "model_run", "dur": 1000}]
    for index in range(runs):  # as onnxruntime writes them: every node once per run, in run order
        events += [_event(name, op, values[index]) for (name, op), values in durations.items()]
    return events


def test_a_kernel_is_its_own_nodes_and_the_reorders_around_it_not_the_boundary_or_the_context():
    events = _trace({("ReorderInput", "ReorderInput"): [50] * 8, ("ctx_pre_x_nchwc", "Conv"): [40] * 8,
                     ("ReorderOutput_token_6", "ReorderOutput"): [900] + [11] * 7, ("op", "MaxPool"): [16] * 8,
                     ("ReorderInput_token_4", "ReorderInput"): [7] * 8, ("ctx_post_nchwc", "Conv"): [30] * 8,
                     ("ReorderOutput", "ReorderOutput"): [60] * 8})
    measured = kernel_time(events, POOL_GRAPH, {"Conv", "FusedConv"}, warmup=1)
    assert set(measured.nodes) == {"ReorderOutput_token_6", "op", "ReorderInput_token_4"}
    assert measured.latency_s == pytest.approx((11 + 16 + 7) * 1e-6)  # the first run's 900 us is warm-up
    # the whole network's node time, read the same way: what `share` divides by (measure scales it to the
    # network's run on the thread's clock)
    assert measured.network_s == pytest.approx((50 + 40 + 11 + 16 + 7 + 30 + 60) * 1e-6)
    assert measured.share == pytest.approx(34 / 214)


def test_a_kernel_absorbed_into_a_context_conv_takes_no_time_and_an_inlined_one_counts():
    # A residual Add that onnxruntime fused into the conv before it: that conv is named after the Add's
    # output (t2), but it is a conv, which only the context computes.
    add = _optimized_graph([("ReorderInput", "ReorderInput", ["x"], ["r0"]),
                            ("Conv", "t2_nchwc", ["r0"], ["r1"]), ("Conv", "ctx_post_nchwc", ["r1"], ["r2"]),
                            ("ReorderOutput", "ReorderOutput", ["r2"], ["y"])])
    events = _trace({("ReorderInput", "ReorderInput"): [5] * 4, ("t2_nchwc", "Conv"): [40] * 4,
                     ("ctx_post_nchwc", "Conv"): [30] * 4, ("ReorderOutput", "ReorderOutput"): [5] * 4})
    assert kernel_time(events, add, {"Conv", "FusedConv"}, warmup=0).latency_s == 0
    # A HardSwish that onnxruntime inlined: nodes without a name in the saved graph, events named by op and index.
    inlined = _optimized_graph([("Neg", "ctx_pre_x", ["x"], ["a"]), ("HardSigmoid", "", ["a"], ["b"]),
                                ("Mul", "", ["a", "b"], ["c"]), ("Neg", "ctx_post", ["c"], ["y"])])
    events = _trace({("ctx_pre_x", "Neg"): [9] * 4, ("HardSigmoid_3", "HardSigmoid"): [4] * 4,
                     ("Mul_4", "Mul"): [6] * 4, ("ctx_post", "Neg"): [9] * 4})
    assert kernel_time(events, inlined, set(), warmup=0).latency_s == pytest.approx(10e-6)


def test_the_profilers_own_cost_is_taken_off_every_node():
    # 65 nodes profiled at 1.5 us each, but the 64 extra nodes of the long chain add only 64 x 0.2 us of wall time
    events = _trace({(f"n{i}", "Neg"): [50] + [1, 2, 2, 2] for i in range(65)})
    bias = profiler_bias_s(10e-6, 10e-6 + 64 * 0.2e-6, events, extra_nodes=64, warmup=1)
    assert bias == pytest.approx(1.5e-6 - 0.2e-6)
    assert profiler_bias_s(0, 1.0, events, extra_nodes=64, warmup=1) == 0  # never below zero
    pool = _trace({("ctx_pre_x_nchwc", "Conv"): [40] * 4, ("op", "MaxPool"): [16] * 4,
                   ("ReorderInput_token_4", "ReorderInput"): [1] * 4})
    measured = kernel_time(pool, POOL_GRAPH, {"Conv", "FusedConv"}, warmup=0, bias_s=1.5e-6)
    assert measured.latency_s == pytest.approx(14.5e-6)  # 16 - 1.5, and the 1 us reorder no less than zero


def test_robust_mean_drops_stalls_and_keeps_fractions_of_a_microsecond():
    assert robust_mean([1, 2, 1, 2, 2, 1, 500, 600]) == pytest.approx(1.25)  # the faster half: 1, 1, 1, 2
    assert robust_mean([3]) == 3
    assert robust_mean([4, 9, 5]) == pytest.approx(4.5)


def test_absorbing_op_types_are_the_contexts_alone():
    conv = SweepEntry.make("conv", ci=8, co=8, k=3, s=1, hw=7, act="relu", ctx=0).network()
    assert absorbing_op_types(conv) == set()  # the kernel is a conv itself: nothing absorbs it
    add = SweepEntry.make("eltwise", c=8, hw=7, kind="add", ctx=0).network()
    assert absorbing_op_types(add) == {"Conv", "FusedConv"}
    relu = SweepEntry.make("eltwise", c=8, hw=7, kind="relu", ctx=0).network()
    assert absorbing_op_types(relu) == {"Neg"}


@pytest.mark.parametrize("entry, neighbour", [
    (SweepEntry.make("conv", ci=8, co=16, k=3, s=2, hw=14, act="relu6", ctx=0), "Conv"),
    (SweepEntry.make("eltwise", c=8, hw=14, kind="scale", ctx=1), "Conv"),
    (SweepEntry.make("memory", c=8, hw=14, kind="concat", ctx=0), "Conv"),
    (SweepEntry.make("eltwise", c=8, hw=14, kind="sigmoid", ctx=0), "Neg"),
    (SweepEntry.make("matmul", m=4, k=16, n=8, ctx=0), "Neg"),
])
def test_the_network_puts_the_op_between_named_neighbours(entry, neighbour):
    network = entry.network()
    context = [n for n in network.graph.node if n.name.startswith(CONTEXT_PREFIX)]
    inputs = len(network.graph.input)
    assert [n.op_type for n in context] == [neighbour] * (inputs + 1)  # one before each input, one after
    assert all(list(n.output) == [n.name] for n in context)  # outputs named like the node (see sweep.py)
    assert network.graph.output[0].name == f"{CONTEXT_PREFIX}post"
    op = [n for n in network.graph.node if n.name == "op"]
    assert len(op) == 1 and op[0].op_type == next(n for n in entry.build().graph.node if n.name == "op").op_type
    assert entry.in_context.id == entry.id.replace("ctx=0", "ctx=1")


def test_a_conv_profiled_in_its_network_is_its_fused_node_without_reorders():
    entry = SweepEntry.make("conv", ci=16, co=24, k=3, s=1, hw=28, act="relu", ctx=1)
    network = entry.network()
    measured = profile_network(network, session_options(CPU), [CPU.execution_provider],
                               seeded_inputs(Model(network)), warmup=2, runs=6)
    # onnxruntime moved the conv and its Relu into its blocked layout as one node; the neighbours are convs
    # in that layout too, so the conv pays no reorder inside the network.
    assert len(measured.nodes) == 1 and not measured.nodes[0].startswith(CONTEXT_PREFIX)
    assert "Reorder" not in measured.nodes[0]
    assert measured.latency_s > 0


def test_a_pool_outside_the_blocked_layout_pays_its_reorders():
    # 13 channels are a multiple of no SIMD block: the blocked layout leaves the pool alone, in NCHW
    entry = SweepEntry.make("pool", c=13, hw=28, kind="maxpool", ctx=1)
    network = entry.network()
    measured = profile_network(network, session_options(CPU), [CPU.execution_provider],
                               seeded_inputs(Model(network)), warmup=2, runs=6)
    assert "op" in measured.nodes
    assert any(name.startswith("Reorder") for name in measured.nodes)
    assert not any(name.startswith(CONTEXT_PREFIX) for name in measured.nodes)


def test_measure_entries_measures_a_kernel_once_in_network_under_its_in_context_id():
    entries = [SweepEntry.make("eltwise", c=8, hw=7, kind="relu", ctx=0),
               SweepEntry.make("eltwise", c=8, hw=7, kind="relu", ctx=1),  # the same kernel
               SweepEntry.make("pool", c=8, hw=8, kind="gap", ctx=0)]
    calls = []
    rows, how = measure_entries(entries, CPU, lambda done, total: calls.append((done, total)))
    assert [entry_id for entry_id, _ in rows] == [OVERHEAD_ID, entries[1].id, entries[2].in_context.id]
    assert all(latency > 0 for _, latency in rows)
    assert calls == [(1, 2), (2, 2)]
    assert "share of its small network" in how["method"] and float(how["profiler_bias_us"]) >= 0


def test_traces_that_cannot_be_read_are_named(tmp_path):
    network = SweepEntry.make("eltwise", c=8, hw=7, kind="relu", ctx=1).network()
    optimized = tmp_path / "optimized.onnx"
    onnx.save(network, str(optimized))
    trace = tmp_path / "trace.json"
    trace.write_text("{not json")
    with pytest.raises(ProfileError, match=r"trace.json: not a profiler trace"):
        read_profile(network, trace, optimized, warmup=0)
    trace.write_text(json.dumps([{"cat": "Session", "name": "model_run", "dur": 3}]))
    with pytest.raises(ProfileError, match=r"no node events \(was it written with enable_profiling\?\)"):
        read_profile(network, trace, optimized, warmup=0)
    with pytest.raises(ProfileError, match=r"missing.onnx: not an optimized model"):
        read_profile(network, trace, tmp_path / "missing.onnx", warmup=0)


def test_a_sweep_profiled_on_a_device_reads_back_into_the_same_measurements(tmp_path):
    assert (profile_on_device.WARMUP, profile_on_device.RUNS) == (PROFILE_WARMUP, PROFILE_RUNS)
    entries = [SweepEntry.make("conv", ci=8, co=16, k=3, s=1, hw=14, act="relu", ctx=0),
               SweepEntry.make("conv", ci=8, co=16, k=3, s=1, hw=14, act="relu", ctx=1),
               SweepEntry.make("eltwise", c=8, hw=14, kind="scale", ctx=1)]
    sweep = tmp_path / "sweep"
    write_sweep(entries, sweep)
    script = sweep / "profile_on_device.py"
    assert script.read_text() == Path(profile_on_device.__file__).read_text()
    # the device has only onnxruntime: run the copied script on its own, with no onnx_tailor on the path
    done = subprocess.run([sys.executable, "-I", str(script), "--threads", "1"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    measurements = measurements_from_profiles(sweep, sweep / "profiles")
    assert [entry_id for entry_id, _ in measurements.rows] == [OVERHEAD_ID, entries[1].id, entries[2].id]
    assert all(latency > 0 for _, latency in measurements.rows)
    assert "CPUExecutionProvider" in measurements.comments["machine"]
    assert float(measurements.comments["profiler_bias_us"]) >= 0
    # each kernel is its share of its network's profile times the network's unprofiled run, as measured here
    timings = json.loads((sweep / "profiles" / "timings.json").read_text())
    assert "share" in measurements.comments["method"]
    for entry_id, latency in measurements.rows[1:]:
        path = next(path for entry, path in read_networks(sweep) if entry.id == entry_id)
        stem = path.stem
        kernel = read_profile(onnx.load(str(path)), sweep / "profiles" / f"{stem}.json",
                              sweep / "profiles" / f"{stem}.optimized.onnx", PROFILE_WARMUP,
                              float(measurements.comments["profiler_bias_us"]) * 1e-6)
        assert 0 < kernel.share <= 1
        assert latency == pytest.approx(max(kernel.share * (timings["networks"][stem] - timings["overhead_s"]),
                                            MIN_KERNEL_S), rel=1e-2)
    # the same through the command line, which writes the CSV that `costmodel fit` takes
    out = tmp_path / "mydev.csv"
    result = CliRunner().invoke(main, ["costmodel", "measure", "--sweep", str(sweep), "--profiles",
                                       str(sweep / "profiles"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert read_measurements(out).rows == [(i, float(f"{v:.6g}")) for i, v in measurements.rows]
    result = CliRunner().invoke(main, ["costmodel", "measure", "--profiles", str(sweep / "profiles"), "-o", str(out)])
    assert result.exit_code == 2 and "--profiles reads the profiles of a sweep folder: give --sweep too" in result.output


def test_profiles_without_their_timings_are_named(tmp_path):
    write_sweep([SweepEntry.make("eltwise", c=8, hw=7, kind="relu", ctx=1)], tmp_path / "sweep")
    (tmp_path / "profiles").mkdir()
    with pytest.raises(ProfileError, match=r"timings.json: not the timings profile_on_device.py writes"):
        measurements_from_profiles(tmp_path / "sweep", tmp_path / "profiles")
