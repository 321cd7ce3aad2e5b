"""Measuring latency with onnxruntime: whole models, and the op sweep.

Timing discipline: a session per model with a fixed thread count and all of
onnxruntime's graph optimizations (what a deployment runs), a warm-up, then
many timed runs of which the median is kept (the machines are shared and
noisy). Every measurement records the machine it was taken on.
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
from .sweep import SweepEntry
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


def session_for(model: Model, target: Target) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = target.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    provider = target.execution_provider
    available = ort.get_available_providers()
    if provider not in available:  # onnxruntime would warn, fall back to the CPU and time that instead
        raise TargetError(f"target {target.name}: execution provider {provider} is not in this onnxruntime "
                          f"(available: {', '.join(available)}); nothing measured")
    session = ort.InferenceSession(model.serialized, options, providers=[provider])
    ran = session.get_providers()[0]
    if ran != provider:  # present but unusable here (a missing driver or library): the CPU took over
        raise TargetError(f"target {target.name}: onnxruntime could not start {provider} and fell back to {ran}; "
                          "nothing measured, so that no CSV records times of a provider that did not run")
    return session


def time_session(session: ort.InferenceSession, feeds: dict, warmup: int = 5, runs: int = 30,
                 max_seconds: float = 2.0) -> Timing:
    """Median latency of `session.run` after `warmup` runs; stops early past `max_seconds`."""
    for _ in range(warmup):
        session.run(None, feeds)
    samples, deadline = [], time.perf_counter() + max_seconds
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        samples.append(time.perf_counter() - start)
        if time.perf_counter() > deadline and len(samples) >= 5:
            break
    values = np.array(samples)
    return Timing(float(np.median(values)), float(np.percentile(values, 10)), float(np.percentile(values, 90)),
                  len(samples))


def measure_model(model: Model, target: Target, warmup: int = 5, runs: int = 30) -> Timing:
    """Whole-model latency on `target` at the model's input shapes."""
    return time_session(session_for(model, target), seeded_inputs(model), warmup, runs)


OVERHEAD_ID = "overhead"


def measure_entries(entries: Iterable[SweepEntry], target: Target,
                    progress: Callable[[int, int], None] | None = None) -> list[tuple[str, float]]:
    """(id, latency_s) per isolated sweep entry, less the per-run overhead, which is its own row.

    The overhead (a session.run of a trivial model) is paid once per model run,
    not once per kernel, so it is subtracted here and added back once when a
    whole model is predicted.
    """
    entries = [e for e in entries if not e.p.get("ctx")]
    trivial = SweepEntry.make("eltwise", c=1, hw=1, kind="relu", ctx=0)
    overhead = measure_model(trivial.model(), target, warmup=20, runs=200).median_s
    rows = [(OVERHEAD_ID, overhead)]
    for index, entry in enumerate(entries):
        timing = measure_model(entry.model(), target)
        rows.append((entry.id, max(timing.median_s - overhead, 1e-7)))
        if progress:
            progress(index + 1, len(entries))
    return rows
