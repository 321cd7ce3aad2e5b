"""Greedy search: take the fastest feasible step, repeat until nothing helps.

At each step the candidates are tried fastest-predicted first; the first one
that is really applied, evaluated and found feasible is taken. Deterministic:
candidate order breaks ties by name.
"""

from __future__ import annotations

from .context import Node, SearchContext


def greedy(ctx: SearchContext, evaluations_per_step: int = 8) -> Node | None:
    current = ctx.root
    while not ctx.out_of_time():
        taken = next((child for child in ctx.children(current, evaluations_per_step) if child.feasible), None)
        if taken is None:
            break
        ctx.progress(f"step {len(taken.steps)}: {taken.steps[-1]} -> {taken.latency_s * 1e3:.4f} ms predicted")
        current = taken
    return ctx.best
