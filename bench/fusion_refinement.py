"""Fusions that hold: every IBN block fused in turn, least squares alone vs refined through the activation.

    python bench/fusion_refinement.py [--model both|paddle_cls|digits] [--refine 0,100,300]
                                      [--lines 2000] [--calibration 500]

fuse_ibn_expansion is applied at every block in sequence (`apply_pass` with
no anchor: each block fitted on the already-rewritten network) once per
`refine` value; refine=0 is the two least-squares stages alone.

paddle_cls: the PaddleOCR text-direction classifier (11 blocks) on `--lines`
rendered text lines, half turned 180 degrees (bench/text_lines.py), split
with seed 0 into `--calibration` lines the pass fits on and the rest, the
test split, which only judges: 1500 test lines put the 95% interval of a
~99% top-1 within about +-0.5 points, of a top-1 change within about +-1.
digits: the demo model (9 blocks) on its 360 held-out digits, split half and
half with seed 0 as the tests do; its 180 test digits give intervals of
several points, so it shows the direction, not the size, of a change.

Columns: top-1 on the test split with its 95% Wilson interval; dtop1, the
change against the original in points with a 95% paired bootstrap interval
(1000 resamples of per-sample correctness differences); agreement with the
original's top-1 (%, Wilson); the local errors the pass reports (relative
L2 error of each block's projection output on the calibration split: mean
and worst over the blocks); the seconds `apply_pass` took (fitting and
measuring the local errors), on this machine's 2 shared cores.

Prints tables; asserts nothing. Seeded and deterministic; 8 to 9 minutes on an idle machine
with the defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.text_lines import available, text_line_dataset  # noqa: E402
from onnx_tailor import accuracy, zoo  # noqa: E402
from onnx_tailor.accuracy import Evaluator, bootstrap_interval, get_metric  # noqa: E402
from onnx_tailor.passes import apply_pass  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def model_and_split(name: str, lines: int, calibration: int):
    if name == "digits":
        dataset = accuracy.load_npz(REPO / "models" / "digits_eval.npz")
        return load(REPO / "models" / "digits_mbv2.onnx"), accuracy.split_dataset(dataset, 0.5, seed=0)
    paddle = zoo.fetch("paddle_cls")
    if isinstance(paddle, str) or available():
        sys.exit(f"cannot run paddle_cls: {paddle if isinstance(paddle, str) else available()}")
    inputs, labels = text_line_dataset(lines)
    dataset = accuracy.Dataset({"x": inputs}, labels, "rendered text lines")
    return load(paddle["paddle_cls"], {"x": (1, 3, 48, 192)}), accuracy.split_dataset(dataset, calibration, seed=0)


def correct(outputs, labels: np.ndarray) -> np.ndarray:
    return (next(iter(outputs.values())).argmax(axis=1) == labels).astype(np.float64)


def table(name: str, steps: list[int], lines: int, calibration: int) -> None:
    model, split = model_and_split(name, lines, calibration)
    test = split.evaluation
    evaluator = Evaluator()
    reference = evaluator.reference_outputs(model, test)
    before = get_metric("top1")(reference, test, None, None)
    print(f"## {name}: calibration {len(split.calibration)}, test {len(test)} (seed 0); original top-1 "
          f"{before.value:.2f} {before.interval}")
    print(f"  {'refine':>6}  {'top-1 [95% CI]':<24} {'dtop1 [95% CI]':<22} {'agree [95% CI]':<24} "
          f"{'err mean':>8} {'worst':>6} {'seconds':>7}")
    for refine in steps:
        start = time.perf_counter()
        result = apply_pass(model, "fuse_ibn_expansion", None, {"init": "lsq", "refine": refine},
                            split.calibration.inputs)
        seconds = time.perf_counter() - start
        outputs = evaluator.run(result.model, test)
        top1 = get_metric("top1")(outputs, test, None, None)
        agree = get_metric("agreement")(outputs, test, reference, None)
        diff = correct(outputs, test.labels) - correct(reference, test.labels)
        low, high = bootstrap_interval(diff)
        errors = np.array(result.local_errors)
        change = f"{100 * diff.mean():+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
        print(f"  {refine:>6}  {top1.value:.2f} {top1.interval:<17} {change:<22} {agree.value:.2f} "
              f"{agree.interval:<17} {errors.mean():>8.3f} {errors.max():>6.3f} {seconds:>7.0f}")
        print(f"  {'':>6} local error per block: {' '.join(f'{e:.3f}' for e in errors)}", flush=True)
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="both", choices=("both", "paddle_cls", "digits"))
    parser.add_argument("--refine", default="0,100,300", help="refine values (gradient steps per block)")
    parser.add_argument("--lines", type=int, default=2000, help="rendered text lines for paddle_cls")
    parser.add_argument("--calibration", type=int, default=500, help="of them, lines the pass fits on")
    args = parser.parse_args()
    steps = [int(s) for s in args.refine.split(",")]
    for name in ("paddle_cls", "digits") if args.model == "both" else (args.model,):
        table(name, steps, args.lines, args.calibration)


if __name__ == "__main__":
    main()
