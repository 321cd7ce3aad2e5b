"""How well the learned cost model predicts latency on models it never saw.

    python bench/costmodel_fidelity.py [--variants 6] [--targets npu-p16,npu-p32,npu-p64,cpu-ort]

Held-out models: the digits demo model, the PaddleOCR classifier and
detector, and variants of each made by applying random passes
(densify_depthwise, pad_channels, fuse_ibn_expansion) at random sites with a
fixed seed. None of them is in the training sweep. Ground truth is the
simulator for npu-* targets and real onnxruntime whole-model timing (median,
measured side by side in this run) for cpu-ort.

Prints, per target: Spearman rank correlation of predicted vs true latency,
mean absolute percentage error, and the share of models within +-10%; then,
per IBN block of the PaddleOCR detector at its deployment size (640x640) on
npu-p32 and npu-p16, the change in predicted and simulated latency when that
block alone is fused.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnx_tailor import zoo  # noqa: E402
from onnx_tailor.analysis import find_ibn_blocks  # noqa: E402
from onnx_tailor.costmodel import cost_model_for, load_target, simulate  # noqa: E402
from onnx_tailor.costmodel.measure import machine_description, measure_model  # noqa: E402
from onnx_tailor.passes import get_pass  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RANDOM_PASSES = ("densify_depthwise", "pad_channels", "fuse_ibn_expansion")


def base_models(det_size: int):
    models = [("digits", load(REPO / "models" / "digits_mbv2.onnx"))]
    paddle = zoo.fetch("paddle_cls", "paddle_det")
    if isinstance(paddle, str):
        print(f"note: {paddle}; PaddleOCR models left out", file=sys.stderr)
        return models
    models.append(("paddle_cls", load(paddle["paddle_cls"], {"x": (1, 3, 48, 192)})))
    models.append(("paddle_det", load(paddle["paddle_det"], {"x": (1, 3, det_size, det_size)})))
    return models


def random_variant(model, rng: random.Random):
    """1 to 4 random pass applications at random sites (weights are irrelevant to latency: previews)."""
    steps = []
    for _ in range(rng.randint(1, 4)):
        rewrite = get_pass(rng.choice(RANDOM_PASSES))
        params = {"multiple": rng.choice((8, 16, 32))} if rewrite.name == "pad_channels" else {}
        sites = rewrite.find(model, **params)
        if sites:
            site = rng.choice(sites)
            model = rewrite.preview(model, site)
            steps.append(f"{rewrite.name}@{site.anchor}")
    return model, steps


def held_out(variants: int, det_size: int):
    rng = random.Random(0)
    out = []
    for name, model in base_models(det_size):
        out.append((name, model))
        for index in range(variants):
            variant, _ = random_variant(model, rng)
            out.append((f"{name}~{index}", variant))
    return out


def truth(model, target):
    if target.simulated:
        return simulate(model, target).latency_s
    return measure_model(model, target, warmup=5, runs=30).median_s


def fidelity_table(models, target_names):
    print(f"\n{'target':<9} {'models':>6} {'Spearman':>9} {'MAPE':>7} {'within 10%':>11} {'worst':>8} {'fit s':>6} "
          f"{'score ms':>9}")
    details = {}
    for name in target_names:
        target = load_target(name)
        start = time.perf_counter()
        cost_model = cost_model_for(target)
        fit_s = time.perf_counter() - start
        predicted, true, score_times = [], [], []
        for _, model in models:
            fresh = model.with_input_shapes(model.input_shapes)  # nothing cached from earlier targets
            start = time.perf_counter()
            predicted.append(cost_model.predict(fresh).latency_s)
            score_times.append(time.perf_counter() - start)
            true.append(truth(model, target))
        errors = np.array(predicted) / np.array(true) - 1
        details[name] = (predicted, true)
        print(f"{name:<9} {len(models):>6} {spearmanr(predicted, true).correlation:>9.4f} "
              f"{np.mean(np.abs(errors)):>7.1%} {np.mean(np.abs(errors) <= 0.10):>11.0%} "
              f"{np.max(np.abs(errors)):>8.1%} {fit_s:>6.1f} {np.median(score_times) * 1e3:>9.1f}")
    return details


def block_fusion_table(det_size: int, target_name: str):
    paddle = zoo.fetch("paddle_det")
    if isinstance(paddle, str):
        return
    target = load_target(target_name)
    cost_model = cost_model_for(target)
    model = load(paddle["paddle_det"], {"x": (1, 3, det_size, det_size)})
    fuse = get_pass("fuse_ibn_expansion")
    sites = {s.anchor: s for s in fuse.find(model)}
    base_sim, base_pred = simulate(model, target).latency_s, cost_model.predict(model).latency_s
    print(f"\nPaddleOCR detector ({det_size}x{det_size}) on {target.name}: fusing one IBN block at a time "
          f"(whole model: simulated {base_sim * 1e3:.3f} ms, predicted {base_pred * 1e3:.3f} ms)")
    print(f"{'#':>2} {'input':>9} {'in':>4} {'exp':>4} {'out':>4} {'k':>2} {'s':>3}   "
          f"{'simulated change':>17} {'predicted change':>17}")
    for index, block in enumerate(find_ibn_blocks(model), 1):
        fused = fuse.preview(model, sites[block.expand])  # the fused structure; latency ignores weights
        d_sim = simulate(fused, target).latency_s - base_sim
        d_pred = cost_model.predict(fused).latency_s - base_pred
        res = f"{block.resolution[0]}x{block.resolution[1]}"
        print(f"{index:>2} {res:>9} {block.in_channels:>4} {block.expanded_channels:>4} {block.out_channels:>4} "
              f"{block.kernel[0]:>2} {block.stride[0]:>3}   {d_sim * 1e6:>+14.1f} us {d_pred * 1e6:>+14.1f} us")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=6, help="random variants per base model")
    parser.add_argument("--targets", default="npu-p16,npu-p32,npu-p64,cpu-ort")
    parser.add_argument("--det-size", type=int, default=320, help="input size of the PaddleOCR detector")
    parser.add_argument("--block-targets", default="npu-p32,npu-p16", help="targets of the per-block fusion table")
    parser.add_argument("--block-size", type=int, default=640, help="detector input size for the per-block table")
    args = parser.parse_args()
    start = time.perf_counter()
    models = held_out(args.variants, args.det_size)
    print(f"machine: {machine_description(load_target('cpu-ort'))}")
    print(f"{len(models)} held-out models ({args.variants} random variants per base model), "
          f"made in {time.perf_counter() - start:.0f} s")
    fidelity_table(models, args.targets.split(","))
    for name in args.block_targets.split(","):
        block_fusion_table(args.block_size, name)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
