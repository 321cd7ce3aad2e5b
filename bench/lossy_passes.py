"""Every lossy pass at every site alone, on real data: what each rewrite costs in accuracy.

    python bench/lossy_passes.py [--model digits|paddle_cls] [--multiple 16]

Per site: the local error the pass reports (relative L2 change of the
block/layer output on the calibration split), the top-1 change and the
top-1 agreement with the original on the evaluation split (never seen by a
pass), and the MACs and parameter change. fuse_ibn_expansion is shown with
both inits (lsq: least-squares reconstruction refined by the default
`refine` steps, compose: the product of the kernels), and once more applied to every block in turn (sequential
calibration: each block fitted on the already-rewritten network).

digits: the demo model and its held-out set; paddle_cls: the PaddleOCR
text-direction classifier on rendered text lines, half turned 180 degrees
(bench/text_lines.py). Both are split half calibration, half evaluation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.text_lines import available, text_line_dataset  # noqa: E402
from onnx_tailor import accuracy, zoo  # noqa: E402
from onnx_tailor.analysis import analyze  # noqa: E402
from onnx_tailor.passes import Exactness, all_passes, apply_pass  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def model_and_data(name: str):
    if name == "digits":
        return load(REPO / "models" / "digits_mbv2.onnx"), accuracy.load_npz(REPO / "models" / "digits_eval.npz")
    paddle = zoo.fetch("paddle_cls")
    if isinstance(paddle, str) or available():
        sys.exit(f"cannot run paddle_cls: {paddle if isinstance(paddle, str) else available()}")
    inputs, labels = text_line_dataset(400)
    return (load(paddle["paddle_cls"], {"x": (1, 3, 48, 192)}),
            accuracy.Dataset({"x": inputs}, labels, "rendered text lines"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits", choices=("digits", "paddle_cls"))
    parser.add_argument("--multiple", type=int, default=16, help="P for passes that align channels")
    args = parser.parse_args()
    model, dataset = model_and_data(args.model)
    split = accuracy.split_dataset(dataset, calibration=0.5, seed=0)
    calib, evaluation = split.calibration.inputs, split.evaluation
    evaluator = accuracy.Evaluator()
    base = analyze(model)
    top1 = evaluator.score(model, evaluation, "top1")
    print(f"## {args.model}: {base.macs / 1e6:.2f} M MACs, {base.params:,} params; {top1}; "
          f"calibration {len(split.calibration)}, evaluation {len(evaluation)}")
    print("local err: relative L2 change of the site's output on calibration data; dtop1 in points on the "
          "evaluation split; agree: top-1 agreement with the original, %\n")

    def row(label: str, rewritten, error):
        after = evaluator.scores(rewritten, evaluation, ["top1", "agreement"], reference=model)
        cost = analyze(rewritten)
        err = f"{error:.3f}" if error is not None else "-"
        print(f"  {label:<58} {err:>9} {after['top1'].value - top1.value:>+7.2f} {after['agreement'].value:>7.2f} "
              f"{cost.macs / base.macs - 1:>+8.1%} {cost.params / base.params - 1:>+8.1%}")

    header = f"  {'site':<58} {'local err':>9} {'dtop1':>7} {'agree':>7} {'MACs':>8} {'params':>8}"
    variants = [("fuse_ibn_expansion", {"init": "lsq"}), ("fuse_ibn_expansion", {"init": "compose"}),
                ("align_channels", {"multiple": args.multiple}), ("scale_depth", {"alpha": 0.75}),
                ("factor_low_rank", {"energy": 0.9, "method": "whitened"})]
    lossy = {n for n, p in all_passes().items() if p.exactness is Exactness.LOSSY}
    for name, params in variants:
        if name not in lossy:
            continue
        rewrite = all_passes()[name]
        sites = rewrite.find(model, **params)
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        print(f"### {name} ({shown}): {len(sites)} sites")
        print(header)
        start = time.perf_counter()
        for site in sites:
            result = apply_pass(model, name, site.anchor, params, calib)
            row(site.anchor[-58:], result.model, result.local_errors[0])
        print(f"  ({time.perf_counter() - start:.0f} s)\n")
    print("### fuse_ibn_expansion at every block in turn (each fitted on the already-rewritten network)")
    print(header)
    for init in ("lsq", "compose"):
        result = apply_pass(model, "fuse_ibn_expansion", None, {"init": init}, calib)
        worst = max(result.local_errors) if result.local_errors else None
        row(f"all {len(result.sites)} blocks, init={init} (err: the worst block)", result.model, worst)


if __name__ == "__main__":
    main()
