"""Greedy search: take the fastest feasible step, repeat until nothing helps.

At each step the candidates are tried fastest-predicted first; the first one
that is really applied, evaluated and found feasible is taken. Deterministic:
candidate order breaks ties by name.

Every candidate predicted faster is tried, however many fail first, unless
`evaluations_per_step` caps them: the search never retries a step that broke
the accuracy budget from an earlier model (`SearchContext.failed_before`), so
its evaluations add up to the steps it takes plus the distinct steps that fail,
not to the failures times the steps. A cap of 8 stopped the PaddleOCR detector
(320x320, npu-p32, cosine 0.01 on rendered pages) at 1.19x with untried steps
that fit; uncapped it reaches 1.28x (bench/optimize_quality.py's docstring).
"""

from __future__ import annotations

from .context import Node, SearchContext


def greedy(ctx: SearchContext, evaluations_per_step: int | None = None) -> Node | None:
    current = ctx.root
    while not ctx.out_of_time():
        taken = next((child for child in ctx.children(current, evaluations_per_step) if child.feasible), None)
        if taken is None:
            break
        ctx.progress(f"step {len(taken.steps)}: {taken.steps[-1]} -> {taken.latency_s * 1e3:.4f} ms predicted")
        current = taken
    return ctx.best
