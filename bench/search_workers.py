"""`optimize --workers N` against `--workers 1`: wall seconds and output bytes, run alternately.

    python bench/search_workers.py [--models paddle_cls] [--search beam] [--workers 1,2] [--repeats 2]

Each run is the command line itself (`python -m onnx_tailor optimize`) in a
fresh process: the PaddleOCR classifier (onnx_tailor.zoo, cached in
~/.cache/onnx-tailor) or digits, on seeded random inputs with output cosine
against the original and a 1% budget, judged in fp32, target npu-p32, no
time budget. Worker counts take turns (1, 2, 1, 2, ...) so that a shared
machine's load falls on both alike; the load average is printed with every
run, and the CPU seconds each run used (itself and its workers: on a
shared machine, what it had of the cores). Per model: the median wall
seconds per worker count, the speed-up against the first count, and whether
every run wrote the same model and recipe bytes (it must: the search registers results in one-process order).

On 2 idle cores (load 1.0, 2026-12-03; `--models paddle_cls --search beam
--workers 1,2 --repeats 1`): 471.5 s with one process, 240.9 s with two
(1.96x; 471 and 448 CPU s), the same bytes. The README's digits run
(greedy): 91.2 s and 91.4 s wall, the same bytes.

Since then one process got four times faster (previews by region, captures
by cut), so what the search does between the workers' jobs weighs more. On
2 idle cores (2026-12-04, load 0.5-1.8, `--repeats 2`): 111.7 s with one
process, 70.6 s with two (1.58x; 112 and 129 CPU s). A timeline of the
workers' jobs showed each idle 10% of the run, and the main process spent a
third of its own CPU serializing every model a worker sent back to hash it
(as each worker did for every parent a job brought). A model now travels
with its content hash when known (`Model.__reduce__`), workers hash what
they make, and a beam's frontier has its previews built in one batch
(`SearchContext.candidates_of`): 113.3 s and 67.8 s (1.67x; 113 and 125 CPU
s), the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.search_scaling import SHAPES, model_paths  # noqa: E402  (the repository on the path first)

MODELS = ("paddle_cls", "digits")


def run(path: Path, name: str, search: str, workers: int, scratch: Path) -> tuple[float, float, str]:
    """One `optimize` run: its wall seconds, the CPU seconds of it and its workers (user and system), and a
    digest of the model and recipe it wrote."""
    output, recipe = scratch / f"{name}-{workers}.onnx", scratch / f"{name}-{workers}.json"
    command = [sys.executable, "-m", "onnx_tailor", "optimize", str(path), "--target", "npu-p32",
               "--precision", "fp32", "--search", search, "--workers", str(workers), "--quiet",
               "-o", str(output), "--recipe", str(recipe)]
    if name == "digits":
        command += ["--data", str(path.parent / "digits_eval.npz"), "--max-drop", "1.0"]
    else:
        command += ["--data", "random", "--metric", "cosine", "--max-drop", "1%"]
    for tensor, shape in SHAPES.get(name, {}).items():
        command += ["--input-shape", f"{tensor}={','.join(map(str, shape))}"]
    before, started = _children_cpu_s(), time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, _children_cpu_s() - before
    if done.returncode != 0:
        raise SystemExit(f"{name} with {workers} worker(s) failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return wall, cpu, hashlib.sha256(output.read_bytes() + recipe.read_bytes()).hexdigest()[:16]


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children, theirs included (a run waits for its workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="paddle_cls")
    parser.add_argument("--search", choices=("greedy", "beam", "evolutionary"), default="beam")
    parser.add_argument("--workers", default="1,2", help="worker counts, the first the baseline")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    if any(n not in MODELS for n in names):
        raise SystemExit(f"choose models from {', '.join(MODELS)}")
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        paths = model_paths(names, Path(scratch))
        print(f"search {args.search}, workers {counts}, {args.repeats} round(s), {os.cpu_count()} cpus")
        for name in names:
            walls: dict[int, list[float]] = {w: [] for w in counts}
            digests = set()
            for round_ in range(args.repeats):
                for workers in counts:
                    load = os.getloadavg()[0]
                    wall, cpu, digest = run(paths[name], name, args.search, workers, Path(scratch))
                    walls[workers].append(wall)
                    digests.add(digest)
                    print(f"{name} round {round_ + 1} workers {workers}: {wall:.1f} s ({cpu:.0f} CPU s), "
                          f"output {digest}, "
                          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
            base = statistics.median(walls[counts[0]])
            for workers in counts:
                median = statistics.median(walls[workers])
                print(f"{name} workers {workers}: median {median:.1f} s, {base / median:.2f}x against "
                      f"{counts[0]}")
            print(f"{name}: {'the same bytes from every run' if len(digests) == 1 else 'DIFFERENT BYTES'}")


if __name__ == "__main__":
    main()
