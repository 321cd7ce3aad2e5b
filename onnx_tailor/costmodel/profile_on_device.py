"""Profile a sweep's kernel networks on a device that onnx-tailor does not run on (needs onnxruntime and numpy).

`onnx-tailor costmodel sweep -o sweep/` copies this file into the sweep folder.
On the device:

    python sweep/profile_on_device.py --provider CPUExecutionProvider --threads 1

runs every kernel network of `sweep/manifest.json` ("networks") with onnxruntime's profiler
and writes, into `sweep/profiles/`, each network's trace (`<network>.json`)
and the graph onnxruntime optimized it into (`<network>.optimized.onnx`), and
`timings.json`: the median time of a whole run of each network without the
profiler ("networks") and of a trivial model (the per-run overhead no node
event covers), on the clock whole models are timed with (the calling thread's
CPU time for one thread, else wall time), and the wall time of two chains of
trivial nodes, one of them also profiled (`calibration_long.json`), which say
what the profiler adds to every node; and the whole training networks of the
manifest ("training_networks", `costmodel.netfactor`), timed without the
profiler in interleaved rounds ("training_networks": the median over rounds of
each round's median), which say how a whole network's run relates to the sum
of its kernels. Back on a machine with onnx-tailor:

    onnx-tailor costmodel measure --sweep sweep/ --profiles sweep/profiles -o mydev.csv

reads each kernel's share of its network's node time from them
(`costmodel.profiler`), times the network's unprofiled run less the overhead
(as `costmodel measure` does here), into the measurements CSV that
`costmodel fit` takes. It imports nothing of
onnx-tailor's, so that the device needs nothing but onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

WARMUP = 5  # runs the profile reader leaves out (measure.PROFILE_WARMUP; a test keeps them equal)
RUNS = 30


def options(threads: int, **paths) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if paths:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(paths["prefix"])
        opts.optimized_model_filepath = str(paths["optimized"])
    return opts


def feeds_for(session: ort.InferenceSession) -> dict:
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
            for i in session.get_inputs()}


def run_median(session: ort.InferenceSession, warmup: int = 20, runs: int = 300, clock=time.perf_counter) -> float:
    """The median time of a whole `session.run` on `clock` (wall time by default)."""
    feeds, samples = feeds_for(session), []
    for index in range(warmup + runs):
        start = clock()
        session.run(None, feeds)
        if index >= warmup:
            samples.append(clock() - start)
    return float(np.median(samples))


def run_clock(threads: int):
    """The thread's CPU time for one thread (onnxruntime computes on the calling thread: a run's time on an
    idle core, which other processes cannot lengthen), else wall time (measure.run_clock)."""
    return time.thread_time if threads == 1 else time.perf_counter


def run_profiled(session: ort.InferenceSession, trace: Path) -> None:
    feeds = feeds_for(session)
    for _ in range(WARMUP + RUNS):
        session.run(None, feeds)
    os.replace(session.end_profiling(), trace)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", default="CPUExecutionProvider", help="the execution provider to profile")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (as the target profile says)")
    parser.add_argument("--sweep", type=Path, default=Path(__file__).resolve().parent, help="the sweep folder")
    args = parser.parse_args()
    manifest = json.loads((args.sweep / "manifest.json").read_text())
    out = args.sweep / "profiles"
    out.mkdir(exist_ok=True)
    timings = {"machine": f"{platform.machine()} {platform.processor()}; onnxruntime {ort.__version__} "
                          f"{args.provider}; {args.threads} thread(s)"}
    clock = run_clock(args.threads)
    for key, file, on in (("overhead_s", "overhead.onnx", clock),
                          ("calibration_short_s", "calibration_short.onnx", time.perf_counter),
                          ("calibration_long_s", "calibration_long.onnx", time.perf_counter)):
        timings[key] = run_median(ort.InferenceSession(str(args.sweep / file), options(args.threads),
                                                       providers=[args.provider]), clock=on)
    calibration = ort.InferenceSession(str(args.sweep / "calibration_long.onnx"),
                                       options(args.threads, prefix=out / "calibration_long",
                                               optimized=out / "calibration_long.optimized.onnx"),
                                       providers=[args.provider])
    run_profiled(calibration, out / "calibration_long.json")
    timings["networks"] = {}
    for index, entry in enumerate(manifest["networks"]):
        stem = Path(entry["network"]).stem
        session = ort.InferenceSession(str(args.sweep / entry["network"]),
                                       options(args.threads, prefix=out / stem,
                                               optimized=out / f"{stem}.optimized.onnx"),
                                       providers=[args.provider])
        run_profiled(session, out / f"{stem}.json")
        plain = ort.InferenceSession(str(args.sweep / entry["network"]), options(args.threads),
                                     providers=[args.provider])
        timings["networks"][stem] = run_median(plain, WARMUP, RUNS, clock)
        if (index + 1) % 50 == 0:
            print(f"profiled {index + 1}/{len(manifest['networks'])}", flush=True)
    whole = manifest.get("training_networks", [])
    timings["training_networks"] = dict(zip([n["id"] for n in whole], interleaved_medians(
        [ort.InferenceSession(str(args.sweep / n["file"]), options(args.threads), providers=[args.provider])
         for n in whole], clock)))
    (out / "timings.json").write_text(json.dumps(timings, indent=1))


def interleaved_medians(sessions: list, clock, rounds: int = 7, runs: int = 7, warm: int = 2) -> list[float]:
    """Each session's whole-run time: in each round every session in turn (`warm` untimed runs, then the
    median of `runs`), the median over rounds kept (measure.interleaved_medians)."""
    feeds = [feeds_for(session) for session in sessions]
    medians = [[] for _ in sessions]
    for _ in range(rounds):
        for session, feed, kept in zip(sessions, feeds, medians):
            for _ in range(warm):
                session.run(None, feed)
            samples = []
            for _ in range(runs):
                start = clock()
                session.run(None, feed)
                samples.append(clock() - start)
            kept.append(float(np.median(samples)))
    return [float(np.median(kept)) for kept in medians]


if __name__ == "__main__":
    main()
