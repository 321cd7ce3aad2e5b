"""Beam search: keep the K fastest feasible sequences, extend each, repeat.

Each round extends every sequence in the beam by its most promising
candidates (fastest predicted first), keeps the feasible children that are
faster than their parent, and retains the K fastest distinct models.
"""

from __future__ import annotations

from .context import Node, SearchContext


def beam(ctx: SearchContext, width: int = 4, expansions_per_node: int = 6) -> Node | None:
    frontier = [ctx.root]
    while frontier and not ctx.out_of_time():
        children: dict[str, Node] = {}
        if ctx.executor.width > 1:  # the whole round at once on the workers (its previews, then its
            # candidates), registered in order below
            found = ctx.candidates_of(frontier)
            ctx.prefetch([(node, c) for node, candidates in zip(frontier, found)
                          for c in ctx.planned(node, expansions_per_node, candidates)])
        for node in frontier:
            for child in ctx.children(node, expansions_per_node):
                if child.feasible and child.latency_s < node.latency_s:
                    children.setdefault(child.key, child)
        frontier = sorted(children.values(), key=lambda n: (n.latency_s, n.key))[:width]
        if frontier:
            ctx.progress(f"round {len(frontier[0].steps)}: beam of {len(frontier)}, "
                         f"fastest {frontier[0].latency_s * 1e3:.4f} ms predicted")
    return ctx.best
