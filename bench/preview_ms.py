"""Milliseconds of process time per candidate preview on the PaddleOCR detector at 640x640, the search's first step.

    PYTHONPATH=TREE python bench/preview_ms.py [--repeats 7] [--profile]

What `bench/search_scaling.py --mode previews` times inside a whole search,
alone: every pass's sites on the detector (92), previewed together by
`search.preview.previews` as the search's first step does, on a model loaded
afresh for each repeat (what a search keeps per model starts empty), its whole
kernel costs and sites found untimed as the search has them by then. Prints
each repeat and their median; `--profile` prints one repeat's profile
instead. Compare two trees by running it with each on PYTHONPATH in turn,
alternating, several times.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

from onnx_tailor import zoo
from onnx_tailor.costmodel import cost_model_for, load_target
from onnx_tailor.costmodel.delta import kernel_costs
from onnx_tailor.ir import Model
from onnx_tailor.passes import all_passes, get_pass
from onnx_tailor.passes.canonicalize import load
from onnx_tailor.search.preview import previews

SHAPE = {"x": (1, 3, 640, 640)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    found = zoo.fetch("paddle_det")
    if isinstance(found, str):
        raise SystemExit(f"cannot fetch the PaddleOCR detector: {found}")
    proto = load(found["paddle_det"], SHAPE).proto
    target = load_target("npu-p32")
    cost_model = cost_model_for(target)
    rewrites = [get_pass(name) for name in all_passes()]
    # The search's parameters (`SearchContext.params_for`): the target's parallelism wherever a pass takes one.
    params = {r.name: {"multiple": target.parallelism} if any(p.name == "multiple" for p in r.params) else {}
              for r in rewrites}
    times = []
    for _ in range(1 if args.profile else args.repeats):
        model = Model(proto, SHAPE)
        costs = kernel_costs(cost_model, model)
        sites = [site for r in rewrites for site in r.find(model, **params[r.name])]
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(previews, cost_model, model, costs, sites, params)
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
            return
        started = time.process_time()
        previews(cost_model, model, costs, sites, params)
        times.append((time.process_time() - started) / len(sites) * 1e3)
    print(f"{len(sites)} previews: median {statistics.median(times):.2f} ms per preview "
          f"({' '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
