"""align_channels and scale_depth on the digits demo model: every site alone, naive vs data-aware.

    python bench/lossy_channels.py [--multiples 8,16] [--alphas 0.75,0.5] [--skip-all]

The data is models/digits_eval.npz split 50/50 (seed 0): passes fit on the
180 calibration samples, every accuracy figure is on the other 180 only.

Per site, two variants of the same rewrite (same graph, same MACs and params):
- naive: keep the first C' channels, consumers keep their input weights
  (`importance=first refit=none`);
- data-aware: the defaults, greedy least-squares channel selection and a
  ridge least-squares refit of the consumers (`importance=greedy refit=lstsq`).

Columns: `err` is the local error the pass reports (relative L2 change of its
output tensor on the calibration data, in-sample for the refit); `dtop1` is
top-1 change in points on the evaluation split with a 95 % paired bootstrap
interval (1000 resamples of per-sample correctness differences); `agree` is
top-1 agreement with the original (%); `MACs`/`params` are the change against
the original model (analysis.analyze). The last rows of each table apply
every site at once (the driver re-finds sites after each application, so each
later site is fitted on the already rewritten network).

P is 8 and 16, not 32: aligning *down* to 32 would remove every channel of
the 12- and 20-channel layers (which the pass declines) and most of the 36-,
44- and 60-channel ones; 8 and 16 are the NPU profiles' smaller parallelism
factors and keep each removal to at most 15 of a layer's channels.

Prints tables; asserts nothing. Takes several minutes on one CPU core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnx_tailor import accuracy  # noqa: E402
from onnx_tailor.accuracy import Evaluator, bootstrap_interval, get_metric  # noqa: E402
from onnx_tailor.analysis import analyze, find_ibn_blocks  # noqa: E402
from onnx_tailor.ir import Model  # noqa: E402
from onnx_tailor.passes import apply_pass, get_pass  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402
from onnx_tailor.passes.channel_groups import plan_group  # noqa: E402
from onnx_tailor.passes.scale_depth import scaled_width  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {"naive": {"importance": "first", "refit": "none"}, "data-aware": {}}


class Judge:
    """Scores variants against the original on the evaluation split, one model run each."""

    def __init__(self, original: Model, evaluation):
        self.original, self.data = original, evaluation
        self.evaluator = Evaluator()
        self.reference = self.evaluator.reference_outputs(original, evaluation)
        self.correct = self._correct(self.reference)
        self.top1 = get_metric("top1")(self.reference, evaluation, None, None).value
        cost = analyze(original)
        self.macs, self.params = cost.macs, cost.params

    def _correct(self, outputs) -> np.ndarray:
        return (next(iter(outputs.values())).argmax(axis=1) == self.data.labels).astype(np.float64)

    def __call__(self, model: Model) -> dict:
        outputs = self.evaluator.run(model, self.data)
        diff = self._correct(outputs) - self.correct
        low, high = bootstrap_interval(diff)
        agreement = get_metric("agreement")(outputs, self.data, self.reference, None)
        return {"dtop1": 100 * diff.mean(), "ci": (100 * low, 100 * high), "agree": agreement.value}

    def cost(self, model: Model) -> tuple[float, float]:
        cost = analyze(model)
        return 100 * (cost.macs / self.macs - 1), 100 * (cost.params / self.params - 1)


def short_names(model: Model) -> dict[str, str]:
    names = {"/stem/stem.0/Conv": "stem", "/head/head.0/Conv": "head"}
    for index, block in enumerate(find_ibn_blocks(model)):
        names[block.expand] = f"b{index}.expand"
        names[block.project] = f"b{index}.project"
        convs = [n for n in block.squeeze_excitation if model.node(n).op_type == "Conv"]
        if len(convs) == 2:
            names[convs[0]], names[convs[1]] = f"b{index}.se_reduce", f"b{index}.se_expand"
    return names


HEADER = (f"{'site':<14} {'channels':>9} {'src/cons':>8} {'MACs':>7} {'params':>7} | "
          f"{'naive err':>9} {'dtop1':>6} {'agree':>6} | {'data-aware err':>14} {'dtop1 [95% CI]':>21} {'agree':>6}"
          f" | {'s':>4}")


def row(name: str, channels: str, roles: str, cost: tuple[float, float], results: dict, seconds: float) -> str:
    naive, smart = results["naive"], results["data-aware"]
    ci = f"[{smart['ci'][0]:+.1f}, {smart['ci'][1]:+.1f}]"
    return (f"{name:<14} {channels:>9} {roles:>8} {cost[0]:>+6.1f}% {cost[1]:>+6.1f}% | "
            f"{naive['err']:>9.3f} {naive['dtop1']:>+6.1f} {naive['agree']:>6.1f} | "
            f"{smart['err']:>14.3f} {smart['dtop1']:>+6.1f} {ci:>14} {smart['agree']:>6.1f} | {seconds:>4.0f}")


def worst(errors) -> float:
    return float(max(errors)) if errors else float("nan")


def run_site(model, judge, calib, pass_name, anchor, params) -> tuple[dict, Model, float]:
    results, last, start = {}, None, time.time()
    for variant, extra in VARIANTS.items():
        applied = apply_pass(model, pass_name, anchor, {**params, **extra}, calib=calib)
        results[variant] = {"err": worst(applied.local_errors), **judge(applied.model)}
        last = applied
    return results, last, time.time() - start


def align_table(model, judge, calib, names, multiple: int, every: bool) -> None:
    rewrite = get_pass("align_channels")
    print(f"\n## align_channels, P = {multiple}  (original top-1 {judge.top1:.2f} %, n = {len(judge.data)})")
    declined = rewrite.declined(model, multiple=multiple)
    aligned = [names.get(d.anchor, d.anchor) for d in declined if "already a multiple" in d.reason]
    narrow = [names.get(d.anchor, d.anchor) for d in declined if "every channel" in d.reason]
    other = [f"{names.get(d.anchor, d.anchor)} ({d.reason})" for d in declined
             if "already a multiple" not in d.reason and "every channel" not in d.reason]
    print(f"declined: already aligned: {', '.join(aligned) or '-'}; narrower than P: {', '.join(narrow) or '-'}"
          + (f"; other: {', '.join(other)}" if other else ""))
    print(HEADER)
    for site in rewrite.find(model, multiple=multiple):
        group = plan_group(model, model.node(site.anchor), removing=True)
        channels = f"{group.channels}->{group.channels // multiple * multiple}"
        roles = f"{len(group.sources)}/{len(group.sinks)}"
        results, applied, seconds = run_site(model, judge, calib, "align_channels", site.anchor, {"multiple": multiple})
        print(row(names.get(site.anchor, site.anchor), channels, roles, judge.cost(applied.model), results, seconds),
              flush=True)
    if every:
        results, applied, seconds = run_site(model, judge, calib, "align_channels", None, {"multiple": multiple})
        print(row("all sites", f"{len(applied.sites)} sites", "", judge.cost(applied.model), results, seconds)
              + "   (err: the worst site)")


def scale_table(model, judge, calib, names, alpha: float, every: bool) -> None:
    rewrite = get_pass("scale_depth")
    print(f"\n## scale_depth, alpha = {alpha:g}, P = 8  (original top-1 {judge.top1:.2f} %, n = {len(judge.data)})")
    print(HEADER)
    for site in rewrite.find(model, alpha=alpha):
        group = plan_group(model, model.node(site.anchor), removing=True)
        channels = f"{group.channels}->{scaled_width(group.channels, alpha, 8)}"
        roles = f"{len(group.sources)}/{len(group.sinks)}"
        results, applied, seconds = run_site(model, judge, calib, "scale_depth", site.anchor, {"alpha": alpha})
        name = names.get(site.anchor, site.anchor).replace(".expand", "")
        print(row(name, channels, roles, judge.cost(applied.model), results, seconds), flush=True)
    if every:
        results, applied, seconds = run_site(model, judge, calib, "scale_depth", None, {"alpha": alpha})
        print(row("all blocks", f"{len(applied.sites)} blocks", "", judge.cost(applied.model), results, seconds)
              + "   (err: the worst block)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--multiples", default="8,16")
    parser.add_argument("--alphas", default="0.75,0.5")
    parser.add_argument("--skip-all", action="store_true", help="no all-sites-at-once rows")
    args = parser.parse_args()
    model = load(REPO / "models" / "digits_mbv2.onnx")
    split = accuracy.split_dataset(accuracy.load_npz(REPO / "models" / "digits_eval.npz"), calibration=0.5, seed=0)
    judge = Judge(model, split.evaluation)
    names = short_names(model)
    calib = split.calibration.inputs
    print(f"digits_mbv2: {judge.macs / 1e6:.2f} M MACs, {judge.params} params; calibration {len(split.calibration)}"
          f" samples, evaluation {len(split.evaluation)}")
    print("src/cons: convs narrowed / consumers refitted; MACs, params: change vs the original;"
          " dtop1: top-1 change in points (evaluation split)")
    for multiple in (int(m) for m in args.multiples.split(",") if m):
        align_table(model, judge, calib, names, multiple, not args.skip_all)
    for alpha in (float(a) for a in args.alphas.split(",") if a):
        scale_table(model, judge, calib, names, alpha, not args.skip_all)


if __name__ == "__main__":
    main()
