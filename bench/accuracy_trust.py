"""Does the accuracy promise hold on data the search never saw? Drops on selection, test and fresh data.

    python bench/accuracy_trust.py [--models paddle_cls,digits] [--seeds 0,1,2] [--rules point,margin]
                                   [--variants int8,fp32,refine0] [--time-budget SECONDS]
                                   [--lines 800] [--fresh 1000] [--fusion-lines 2000]

For each model, split seed and acceptance rule, one `optimize` for npu-p32
with a 1-point top-1 budget, judged in int8 (the target's precision): the
simulated speed-up, the drop on the selection split the search chose with, on
the test split it never saw (after the fallback along the chosen path, which
the row counts), and, for the PaddleOCR classifier, on fresh rendered lines
from another generator seed that nothing in the run read (the honest check:
the fallback itself looks at the test split). Fresh drops are shown in int8
(both models quantized on the run's calibration split) and in fp32.

Acceptance rules (`optimize(acceptance=...)`): `point`, a candidate holds when
its selection drop is within the budget; `margin`, when its drop plus one
standard error of the paired per-sample differences is.

Variants (each over every seed, with the default `margin` rule): `fp32`,
judged in fp32 instead of int8 (the fresh int8 column then shows what int8
deployment costs a model chosen in fp32); `refine0`, fuse_ibn_expansion
without its gradient refinement (`pass_params={"fuse_ibn_expansion":
{"refine": 0}}`: least squares alone). The `int8` rows are the default.

First the fusion table (bench/fusion_refinement.py, same code):
every classifier block fused in sequence, least squares alone (refine=0) vs
refined (the default), judged on --fusion-lines rendered lines less the 500
it fits on.

With no --time-budget each greedy search runs to its end, so the machine's
load changes the seconds, not the result.

Data: the classifier reads --lines rendered text lines (half turned 180
degrees, bench/text_lines.py), split 0.3/0.35/0.35; digits its 360 held-out
samples (no fresh data exists for it, so its row stops at the test split).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fusion_refinement  # noqa: E402
from bench.text_lines import available, text_line_dataset  # noqa: E402
from onnx_tailor import accuracy, zoo  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402
from onnx_tailor.passes.fuse_ibn_expansion import DEFAULT_REFINE  # noqa: E402
from onnx_tailor.search import optimize  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FRESH_SEED = 1000  # a generator seed the search's data never uses
VARIANTS = {  # name: (precision, pass_params)
    "int8": ("int8", None),
    "fp32": ("fp32", None),
    "refine0": ("int8", {"fuse_ibn_expansion": {"refine": 0}}),
}


def cases(names: list[str], lines: int, fresh: int):
    if "paddle_cls" in names:
        reason = available()
        if reason:
            print(f"paddle_cls skipped: {reason}", file=sys.stderr)
        else:
            model = load(zoo.fetch("paddle_cls")["paddle_cls"], {"x": (1, 3, 48, 192)})
            inputs, labels = text_line_dataset(lines)
            fresh_inputs, fresh_labels = text_line_dataset(fresh, seed=FRESH_SEED)
            yield ("paddle_cls", model, accuracy.Dataset({"x": inputs}, labels, f"{lines} rendered lines"),
                   accuracy.Dataset({"x": fresh_inputs}, fresh_labels, f"{fresh} fresh rendered lines"))
    if "digits" in names:
        yield ("digits", load(REPO / "models" / "digits_mbv2.onnx"),
               accuracy.load_npz(REPO / "models" / "digits_eval.npz"), None)


def fresh_drops(result, original, fresh) -> tuple[float, float]:
    """(int8 drop, fp32 drop) of top-1 on the fresh data, both models quantized on the run's calibration split."""
    data, evaluator = result.context.data, accuracy.Evaluator()
    drops = []
    for before, after in ((data.quantized(original), result.emitted("qdq")), (original, result.model)):
        drops.append(evaluator.score(before, fresh, "top1").value - evaluator.score(after, fresh, "top1").value)
    return drops[0], drops[1]


def runs(seeds: list[int], rules: list[str], variants: list[str]):
    """(seed, rule, variant): the default (margin, int8) over every seed first, then seed by seed the other
    rules in int8 and the other variants with margin, so that a run cut short still has the main rows."""
    yield from ((seed, "margin", "int8") for seed in seeds if "margin" in rules and "int8" in variants)
    for seed in seeds:
        yield from ((seed, rule, "int8") for rule in rules if rule != "margin")
        yield from ((seed, "margin", variant) for variant in variants if variant != "int8")


HEADER = (f"{'model':<11} {'seed':>4} {'rule':<7} {'variant':<8} {'speedup':>8} {'sel drop':>9} {'test drop':>10} "
          f"{'n test':>7} {'steps kept':>11} {'fresh int8':>11} {'fresh fp32':>11} {'seconds':>8}")


def row(name, seed, rule, variant, speedup, selection, test, n, kept, fresh_int8, fresh_fp32, seconds) -> str:
    fresh = f"{fresh_int8:>11.2f} {fresh_fp32:>11.2f}" if fresh_int8 is not None else f"{'-':>11} {'-':>11}"
    return (f"{name:<11} {seed:>4} {rule:<7} {variant:<8} {speedup:>7.2f}x {selection:>9.2f} {test:>10.2f} {n:>7} "
            f"{kept:>11} {fresh} {seconds:>8.0f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="paddle_cls,digits")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rules", default="point,margin")
    parser.add_argument("--variants", default="int8,fp32,refine0", help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds of search per run (default: none)")
    parser.add_argument("--lines", type=int, default=800)
    parser.add_argument("--fresh", type=int, default=1000)
    parser.add_argument("--fusion-lines", type=int, default=2000, help="0 skips the fusion table")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]}; choose from {', '.join(VARIANTS)}")
    names = args.models.split(",")
    if args.fusion_lines and "paddle_cls" in names:
        print("Every classifier block fused in sequence (bench/fusion_refinement.py), refine=0 is least squares alone")
        fusion_refinement.table("paddle_cls", [0, DEFAULT_REFINE], args.fusion_lines, 500)
    print("npu-p32, top-1 budget 1.0 point; drops in points (positive is worse); sel and test drops in the "
          "variant's precision")
    print(HEADER, flush=True)
    for name, model, dataset, fresh in cases(names, args.lines, args.fresh):
        for seed, rule, variant in runs(seeds, args.rules.split(","), variants):
            precision, pass_params = VARIANTS[variant]
            start = time.perf_counter()
            result = optimize(model, "npu-p32", data=dataset, metric="top1", max_drop="1.0", seed=seed,
                              acceptance=rule, precision=precision, pass_params=pass_params,
                              time_budget=args.time_budget)
            seconds = time.perf_counter() - start
            report, test = result.report, result.report["test"]
            simulated = report["simulated"]
            fresh_int8, fresh_fp32 = fresh_drops(result, model, fresh) if fresh is not None else (None, None)
            print(row(name, seed, rule, variant, simulated["original_ms"] / simulated["optimized_ms"],
                      report["optimized"]["drop"], test["drop"], test["n"],
                      f"{test['steps_kept']}/{test['steps_chosen']}", fresh_int8, fresh_fp32, seconds), flush=True)


if __name__ == "__main__":
    main()
