"""Where a refinement stands along its steps: the evidence for `passes.refine.GIVE_UP_AT`.

    python bench/refine_checkpoint.py [--models digits,paddle_cls,mobilenetv2_224] [--steps 100]

fuse_ibn_expansion (init lsq, `--steps` refinement steps) is applied at every
block in sequence, as bench/fusion_refinement.py does, on the same data:
digits on half its held-out set, the PaddleOCR classifier on 500 rendered
text lines (seed 0 splits), and the MobileNetV2-224 structure of
bench/search_scaling.py with seeded random weights on the 19 first of 64
seeded random samples (the calibration split a search of it fits on is about
as large). Each block's refinement runs every step (the checkpoint is turned
off), and L on all the calibration data (`ConvPair.error`) is read at the
checkpoints, as a ratio to L before the steps (the least-squares weights).
A row per block: its shapes, L at the start and the end, whether the end is
below the start (the refined weights kept), and the ratios. The summary says
what giving up at GIVE_UP_AT would have changed: the blocks it stops, and any
of them whose end was below its start (the improvement it forgoes).

Prints; asserts nothing. Seeded and deterministic.

On 2 shared cores (load 4-6, 2026-12-03): digits by this file (315 s), the
classifier and MobileNetV2-224 by the same measurement in a script before it
(the same calls and data, 100 steps). Every block of digits (9) and of the
classifier (11) ended below its start, and was at step 50 at most 0.75
(digits) and 0.84 (classifier) of it. Of MobileNetV2-224's 16 blocks, 5 ended
below their start (1.5% to 27% below; at step 50 at most 0.997 of it: its
28x28 blocks), 11 not (at step 50 at least 1.055 of their start, ending 1.04
to 1.4x it, or far above a start of almost 0 for the deep blocks least squares
fits almost exactly). Giving up at step 50 would have stopped exactly those
11; at step 30 it would also have stopped three kept blocks (1.019, 1.034
and 1.040 of their start there), forgoing 5.9%, 1.5% and 1.7% of their error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fusion_refinement import model_and_split  # noqa: E402
from bench.search_scaling import mobilenetv2_224  # noqa: E402
from onnx_tailor.accuracy.sources import load_data  # noqa: E402
from onnx_tailor.passes import apply_pass  # noqa: E402
from onnx_tailor.passes import refine as refine_module  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402

MODELS = ("digits", "paddle_cls", "mobilenetv2_224")
CHECKPOINTS = (10, 20, 30, 40, 50, 60, 75)  # of 100 steps; scaled to --steps


def model_and_calibration(name: str, scratch: Path):
    if name == "mobilenetv2_224":
        model = load(mobilenetv2_224(scratch / "mobilenetv2_224.onnx"))
        return model, {k: v[:19] for k, v in load_data("random", model).inputs.items()}
    model, split = model_and_split(name, 2000, 500)
    return model, split.calibration.inputs


def blocks(name: str, steps: int, scratch: Path) -> list[dict]:
    """One row per refined block of `name`, every step taken."""
    model, calibration = model_and_calibration(name, scratch)
    checkpoints = {max(1, round(c * steps / 100)) for c in CHECKPOINTS}
    rows = []
    real = refine_module.ConvPair.refine

    def traced(pair, x, target, steps, seed=0, on_step=None):
        seen = {}

        def read(t, current):
            if t in checkpoints:
                seen[t] = current.error(x, target)

        refined = real(pair, x, target, steps, seed, read)
        start = pair.error(x, target)
        end = refined.error(x, target) if refined is not pair else None
        rows.append({"shape": tuple(x.shape), "expanded": pair.w1.shape[1], "start": start, "end": end,
                     "ratios": {t: v / max(start, 1e-30) for t, v in sorted(seen.items())}})
        return refined

    refine_module.ConvPair.refine = traced
    given_up_at = refine_module.GIVE_UP_AT
    refine_module.GIVE_UP_AT = 2.0  # past the last step: every step is taken, every checkpoint read
    try:
        apply_pass(model, "fuse_ibn_expansion", None, {"init": "lsq", "refine": steps}, calibration)
    finally:
        refine_module.ConvPair.refine, refine_module.GIVE_UP_AT = real, given_up_at
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model '{unknown[0]}'; choose from {', '.join(MODELS)}")
    checkpoint = round(args.steps * refine_module.GIVE_UP_AT)
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            started = time.perf_counter()
            rows = blocks(name, args.steps, Path(scratch))
            print(f"## {name}: {len(rows)} blocks refined, {args.steps} steps, {time.perf_counter() - started:.0f} s")
            stopped, forgone = 0, []
            for row in rows:
                kept = row["end"] is not None
                at = row["ratios"].get(checkpoint)
                stops = at is not None and at >= 1
                stopped += stops
                if stops and kept:
                    forgone.append(1 - row["end"] / row["start"])
                ratios = " ".join(f"{t}:{r:.3f}" for t, r in row["ratios"].items())
                end = f"{row['end']:.5f}" if kept else "not below"
                print(f"  x{row['shape']} expanded {row['expanded']}: L {row['start']:.5f} -> {end}"
                      f"{' (stopped at ' + str(checkpoint) + ')' if stops else ''}; L / start at {ratios}")
            lost = f"; of them kept without the checkpoint: {len(forgone)}, forgoing " + \
                   ", ".join(f"{100 * f:.1f}%" for f in forgone) + " of L" if forgone else ""
            print(f"  giving up at step {checkpoint}: {stopped} of {len(rows)} blocks stopped{lost}\n", flush=True)


if __name__ == "__main__":
    main()
