"""Kernel times read from onnxruntime's profiler, for a kernel measured inside a small network.

Timing a kernel alone charges it for what it does not pay inside a model:
layout reorders into and out of the runtime's blocked format, caches that
nothing warmed, and the per-run overhead. So each sweep entry runs inside a
small network (`SweepEntry.network`) with `SessionOptions.enable_profiling`,
and its time is read from the trace's node events (`cat: Node`, `dur` in
microseconds, one event per node per run), summed over the nodes that are the
kernel's in the graph onnxruntime actually ran (its optimized graph, saved
beside the trace):
- every node not named as context (`sweep.CONTEXT_PREFIX`; onnxruntime names
  a node it moves into its blocked layout after the node's output, so the
  context's outputs carry the prefix too): the op, whatever it was renamed to
  when onnxruntime fused its activation into it or inlined it;
- every layout reorder between nodes, e.g. into NCHW for a pool that the
  blocked layout does not cover: the kernel pays those inside a network too;
- but not the reorders at the network's own input and output, which belong to
  its boundary, not to the kernel.
A kernel that onnxruntime fused into a neighbour (a residual Add into the
conv before it) has no node of its own left: it takes no time in a network.

Each node's time is the mean of the faster half of its runs after the
warm-up: a node event is wall-clock time, and on a shared machine a run that
loses its core to another process only ever takes longer (on 2 cores at a
load of 13, the node times of the PaddleOCR detector summed to 25.8 ms by
their medians, 16.3 ms by their faster halves, against 18.0 ms of the
thread's CPU time for the whole run), while averaging keeps a resolution
finer than the profiler's whole microseconds. The profiler's own cost is inside every node event (about 1.4 us
a node on a Xeon with onnxruntime 1.32, against 0.2 us for a Neg of 64
floats): a sum over the 60 nodes of a small MobileNet overstated its run by
half. `profiler_bias_s` measures it once per sweep, from two chains of trivial
nodes timed with and without the profiler, and it is taken off every node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import TailorError
from ..ir.temporaries import scratch_folder
from .sweep import CONTEXT_PREFIX

EVENT_SUFFIX = "_kernel_time"  # onnxruntime names a node's compute event '<node name>_kernel_time'
REORDERS = {"ReorderInput", "ReorderOutput"}
# What onnxruntime's graph optimizations turn an op into when it fuses a neighbour into it.
FUSED_FORMS = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"}


class ProfileError(TailorError):
    """A profiler trace (or its optimized graph) that cannot be read."""


@dataclass(frozen=True)
class KernelTime:
    """What a profile says of one kernel: its time, which nodes of the optimized graph it summed, and the
    time of all the network's nodes read the same way (for `share`)."""

    latency_s: float
    nodes: tuple[str, ...]
    network_s: float = 0.0

    @property
    def share(self) -> float:
        """The kernel's share of its network's node time."""
        return self.latency_s / self.network_s if self.network_s > 0 else 0.0


def node_durations_us(events: list) -> dict[str, tuple[str, list[int]]]:
    """Each node's op type and durations (us), in run order, from a trace's events."""
    durations: dict[str, tuple[str, list[int]]] = {}
    for event in events:
        if not isinstance(event, dict) or event.get("cat") != "Node":
            continue
        name = str(event.get("name", ""))
        if name.endswith(EVENT_SUFFIX):
            op_type = str((event.get("args") or {}).get("op_name", ""))
            durations.setdefault(name[:-len(EVENT_SUFFIX)], (op_type, []))[1].append(int(event.get("dur", 0)))
    return durations


def absorbing_op_types(network: onnx.ModelProto) -> set[str]:
    """The op types only the network's context computes (with onnxruntime's fused forms): a node of
    one of them outside the context is a context node that absorbed the kernel."""
    def with_fused(ops):
        return ops | {FUSED_FORMS[op] for op in ops if op in FUSED_FORMS}
    own = {node.op_type for node in network.graph.node if not node.name.startswith(CONTEXT_PREFIX)}
    context = {node.op_type for node in network.graph.node if node.name.startswith(CONTEXT_PREFIX)}
    return with_fused(context) - with_fused(own)


def not_kernel(graph: onnx.GraphProto) -> set[str]:
    """The names of an optimized network's nodes that are not its kernel's by name: the context's, and
    the layout reorders at the network's own input and output."""
    boundary = {vi.name for vi in graph.input} | {vi.name for vi in graph.output}
    return {node.name for node in graph.node
            if node.name.startswith(CONTEXT_PREFIX)
            or (node.op_type in REORDERS and boundary & {*node.input, *node.output})}


def robust_mean(values) -> float:
    """The mean of the faster half of the values (see the module docstring)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    return float(np.mean(ordered[:max(1, (len(ordered) + 1) // 2)]))


def kernel_time(events: list, graph: onnx.GraphProto, absorbing: set[str], warmup: int,
                bias_s: float = 0.0) -> KernelTime:
    """The kernel's time from a trace of a network and the optimized graph it ran (`absorbing` is
    `absorbing_op_types` of the network before optimization), the first `warmup` runs of each node
    left out.

    Node events are matched by name against the optimized graph for the context and the boundary
    reorders; nodes onnxruntime made itself (an inlined HardSwish's HardSigmoid and Mul) have no name
    there and are the kernel's. A context conv that absorbed the kernel (a residual Add fused into the
    conv before it) takes the kernel's output name, but not its op type: the kernel took no time.
    `bias_s`, what the profiler adds to every node's time (`profiler_bias_s`), is taken off each node.
    """
    durations = node_durations_us(events)
    if not durations:
        raise ProfileError("the trace has no node events (was it written with enable_profiling?)")
    excluded = not_kernel(graph)
    total, network, nodes = 0.0, 0.0, []
    for name, (op_type, runs) in durations.items():
        seconds = max(robust_mean(runs[warmup:] or runs) * 1e-6 - bias_s, 0.0)
        network += seconds
        if name in excluded or op_type in absorbing:
            continue
        nodes.append(name)
        total += seconds
    return KernelTime(total, tuple(nodes), network)


def read_events(trace_path: Path) -> list:
    try:
        events = json.loads(Path(trace_path).read_text())
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{trace_path}: not a profiler trace ({exc})") from None
    if not isinstance(events, list):
        raise ProfileError(f"{trace_path}: not a profiler trace (expected a JSON list of events)")
    return events


def _read_graph(optimized_path: Path) -> onnx.GraphProto:
    try:
        return onnx.load(str(optimized_path), load_external_data=False).graph
    except Exception as exc:  # onnx raises several kinds for a missing or damaged file
        raise ProfileError(f"{optimized_path}: not an optimized model ({exc})") from None


def read_profile(network: onnx.ModelProto, trace_path: Path, optimized_path: Path, warmup: int,
                 bias_s: float = 0.0) -> KernelTime:
    """`kernel_time` of `network` from its trace and its optimized model, as `profile_on_device.py` writes
    them on another machine."""
    return kernel_time(read_events(trace_path), _read_graph(optimized_path), absorbing_op_types(network), warmup,
                       bias_s)


def profiler_bias_s(short_s: float, long_s: float, long_events: list, extra_nodes: int, warmup: int) -> float:
    """What the profiler adds to every node's time, from two chains of trivial nodes: `short_s` and `long_s`
    are their unprofiled whole-run medians (the long one `extra_nodes` nodes longer), `long_events` the
    long one's trace. A node's true time is the wall-clock difference per extra node; the profiled one
    is the trace's mean per node; the bias is what is left (never below zero)."""
    durations = node_durations_us(long_events)
    if not durations:
        raise ProfileError("the calibration trace has no node events")
    profiled_s = sum(robust_mean(runs[warmup:] or runs) for _, runs in durations.values()) * 1e-6 / len(durations)
    return max(profiled_s - (long_s - short_s) / extra_nodes, 0.0)


def profiled_run(model: onnx.ModelProto, options, providers: list[str], feeds: dict,
                 runs: int) -> tuple[list, onnx.GraphProto]:
    """Run `model` `runs` times with the profiler on: (the trace's events, the graph onnxruntime optimized it into).

    `options` are the session options of the target (threads, optimization
    level); profiling and the optimized model's path are set here, in a
    temporary folder that is removed afterwards.
    """
    with scratch_folder("profile") as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "trace")
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        for _ in range(runs):
            session.run(None, feeds)
        trace = Path(session.end_profiling())
        return read_events(trace), _read_graph(Path(folder) / "optimized.onnx")


def profile_network(network: onnx.ModelProto, options, providers: list[str], feeds: dict, warmup: int,
                    runs: int, bias_s: float = 0.0) -> KernelTime:
    """Run `network` `warmup + runs` times with the profiler on and read its kernel's time (`kernel_time`)."""
    events, graph = profiled_run(network, options, providers, feeds, warmup + runs)
    return kernel_time(events, graph, absorbing_op_types(network), warmup, bias_s)
