"""Measuring latency with onnxruntime: whole models, and the op sweep.

Timing discipline: a session per model with a fixed thread count and all of
onnxruntime's graph optimizations (what a deployment runs), a warm-up, then
many timed runs of which the median is kept (the machines are shared and
noisy). Every measurement records the machine it was taken on.

The sweep's kernels are measured where they run: inside a small network, their
own nodes' times read from onnxruntime's profiler (`costmodel.profiler`), and
filed under the entry's in-context id (`ctx=1`). The per-run overhead, which
no node event covers, is its own row.

The profile says which share of the network's time is the kernel's; how long
the network runs is timed without the profiler, on the clock a whole model is
timed with (`run_clock`: the thread's CPU time for one thread), and the kernel
gets its share of that less the per-run overhead. Node events are wall-clock
times: on a shared machine the faster half of them (`profiler.robust_mean`)
leaves out the runs that lost the core, but not the slowdown every run shares
with other processes, which the CPU time of a whole model includes (on 2 cores
at a load of 13 the faster halves came to 10-20% less than the thread's CPU
time, and the cost model under-predicted every held-out model by as much).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnxruntime as ort

from ..ir import Model, seeded_inputs
from ..ir.runtime import open_session
from .profiler import profile_network, profiled_run, profiler_bias_s
from .sweep import CALIBRATION_NODES, OVERHEAD_ENTRY, SweepEntry, calibration_chain
from .target import Target, TargetError


@dataclass(frozen=True)
class Timing:
    median_s: float
    p10_s: float
    p90_s: float
    runs: int


def machine_description(target: Target) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}; {os.cpu_count()} cores; {platform.system()} {platform.release()}; "
            f"onnxruntime {ort.__version__} {target.execution_provider}; {target.threads} thread(s)")


def session_options(target: Target) -> ort.SessionOptions:
    """Options of every session that times `target`; refuses a provider this onnxruntime does not have,
    which it would only warn about before timing the CPU instead."""
    available = ort.get_available_providers()
    if target.execution_provider not in available:
        raise TargetError(f"target {target.name}: execution provider {target.execution_provider} is not in this "
                          f"onnxruntime (available: {', '.join(available)}); nothing measured")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = target.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def run_clock(target: Target) -> Callable[[], float]:
    """The clock that times a run on `target` without the time other processes take from it: with one
    intra-op thread onnxruntime computes on the calling thread, so that thread's CPU time is the run's
    time on an idle core (on 2 shared cores at a load of 13, the PaddleOCR detector took 51 ms of wall
    time and 15.5 ms of its thread's); with more threads, only wall time sees them all."""
    return time.thread_time if target.threads == 1 else time.perf_counter


def session_for(model: Model, target: Target) -> ort.InferenceSession:
    session = open_session(model, session_options(target), [target.execution_provider])
    ran = session.get_providers()[0]
    if ran != target.execution_provider:  # present but unusable here (a missing driver or library)
        raise TargetError(f"target {target.name}: onnxruntime could not start {target.execution_provider} and fell "
                          f"back to {ran}; nothing measured, so that no CSV records times of a provider that did "
                          "not run")
    return session


def time_session(session: ort.InferenceSession, feeds: dict, warmup: int = 5, runs: int = 30,
                 max_seconds: float = 2.0, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Median latency of `session.run` after `warmup` runs; stops early past `max_seconds`.

    `clock` is wall time by default; `run_clock(target)` gives the clock that is robust to a shared machine.
    """
    for _ in range(warmup):
        session.run(None, feeds)
    samples, deadline = [], time.perf_counter() + max_seconds
    for _ in range(runs):
        start = clock()
        session.run(None, feeds)
        samples.append(clock() - start)
        if time.perf_counter() > deadline and len(samples) >= 5:
            break
    values = np.array(samples)
    return Timing(float(np.median(values)), float(np.percentile(values, 10)), float(np.percentile(values, 90)),
                  len(samples))


def measure_model(model: Model, target: Target, warmup: int = 5, runs: int = 30,
                  clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Whole-model latency on `target` at the model's input shapes (wall time, unless `clock` says otherwise)."""
    return time_session(session_for(model, target), seeded_inputs(model), warmup, runs, clock=clock)


def interleaved_medians(models: list[Model], target: Target, rounds: int = 7, runs: int = 7,
                        warm: int = 2) -> tuple[list[float], list[float]]:
    """Whole-run latency of every model, as (wall time, the calling thread's CPU time): in each round
    every model in turn (`warm` untimed runs, then a median of `runs`), the median over rounds kept, so
    that a slow spell of a shared machine hits every model alike. The thread's CPU time is a one-thread
    run's time on an idle core (`run_clock`). How the fidelity bench times its truths, and the measure
    run its training networks (`costmodel.netfactor`)."""
    sessions = [(session_for(model, target), seeded_inputs(model)) for model in models]
    for sess, feeds in sessions:  # warm every session before any round counts
        for _ in range(2):
            sess.run(None, feeds)
    walls, cpus = [[] for _ in models], [[] for _ in models]
    for _ in range(rounds):
        for index, (sess, feeds) in enumerate(sessions):
            for _ in range(warm):  # the model before it evicted this one's weights from the caches: a tiny
                sess.run(None, feeds)  # model's first run after the detector took twice as long, its second 20%
            wall, cpu = [], []
            for _ in range(runs):
                start_wall, start_cpu = time.perf_counter(), time.thread_time()
                sess.run(None, feeds)
                cpu.append(time.thread_time() - start_cpu)
                wall.append(time.perf_counter() - start_wall)
            walls[index].append(np.median(wall))
            cpus[index].append(np.median(cpu))
    return [float(np.median(w)) for w in walls], [float(np.median(c)) for c in cpus]


OVERHEAD_ID = "overhead"


def measure_overhead(target: Target) -> float:
    """The per-run overhead: a whole `session.run` of a trivial model (one element through one Relu), on the
    clock the kernels' networks are timed with (`run_clock`)."""
    return measure_model(OVERHEAD_ENTRY.model(), target, 20, 200, clock=run_clock(target)).median_s


PROFILE_WARMUP, PROFILE_RUNS = 5, 30  # profile_on_device.py runs as many on a device


def measure_profiler_bias(target: Target) -> float:
    """What onnxruntime's profiler adds to each node's time on `target` (`profiler.profiler_bias_s`)."""
    short, long = calibration_chain(1), calibration_chain(1 + CALIBRATION_NODES)
    walls = [measure_model(Model(chain), target, warmup=20, runs=300).median_s for chain in (short, long)]
    events, _ = profiled_run(long, session_options(target), [target.execution_provider],
                             seeded_inputs(Model(long)), PROFILE_WARMUP + PROFILE_RUNS)
    return profiler_bias_s(walls[0], walls[1], events, CALIBRATION_NODES, PROFILE_WARMUP)


def measure_in_network(entry: SweepEntry, target: Target, bias_s: float = 0.0, overhead_s: float = 0.0) -> float:
    """The kernel's own time inside its small network (`SweepEntry.network`): its share of the network's node
    time in the profile (each node less the profiler's own cost, `bias_s`), times the network's run on
    `run_clock` less the per-run overhead (`overhead_s`; see the module docstring)."""
    network = Model(entry.network())
    feeds = seeded_inputs(network)
    measured = profile_network(network.proto, session_options(target), [target.execution_provider], feeds,
                               PROFILE_WARMUP, PROFILE_RUNS, bias_s)
    run = time_session(session_for(network, target), feeds, PROFILE_WARMUP, PROFILE_RUNS, clock=run_clock(target))
    return max(measured.share * max(run.median_s - overhead_s, 0.0), MIN_KERNEL_S)


# A kernel that onnxruntime fused into a neighbour takes no time of its own; the regressor learns
# log(latency), so it is filed at this floor (well under any kernel that runs).
MIN_KERNEL_S = 1e-7


def measure_entries(entries: Iterable[SweepEntry], target: Target,
                    progress: Callable[[int, int], None] | None = None) -> tuple[list[tuple[str, float]], dict]:
    """(id, latency_s) per sweep kernel measured inside a network, and the per-run overhead as its own row;
    with comments on how (the profiler's bias taken off every node).

    An entry and its in-context twin are one kernel, measured once under the
    in-context id. The overhead (a session.run of a trivial model) is paid once
    per model run, not once per kernel: it is added once when a whole model is
    predicted.
    """
    kernels = list(dict.fromkeys(entry.in_context for entry in entries))
    bias = measure_profiler_bias(target)
    overhead = measure_overhead(target)
    rows = [(OVERHEAD_ID, overhead)]
    for index, entry in enumerate(kernels):
        rows.append((entry.id, measure_in_network(entry, target, bias, overhead)))
        if progress:
            progress(index + 1, len(kernels))
    return rows, {"method": "each kernel's share of its small network's profile (onnx_tailor.costmodel.profiler) "
                            "times the network's run on the thread's clock",
                  "profiler_bias_us": f"{bias * 1e6:.3f}"}
