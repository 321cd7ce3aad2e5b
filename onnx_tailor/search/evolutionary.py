"""Evolutionary search: a population of rewrite sequences under mutation and selection.

The multishot search of the accelerator-aware NAS reference, over rewrite
sequences instead of architectures: each generation, parents chosen by
tournament (faster feasible models win) are mutated by appending a random
candidate step, drawn with preference for larger predicted gains; children
that are feasible join the population, which keeps its best members; the
original stays in play until better members push it out, so lineages can
restart from it. Seeded and deterministic.
"""

from __future__ import annotations

import random

from .context import Candidate, Node, SearchContext


def evolutionary(ctx: SearchContext, population_size: int = 8, generations: int = 12, seed: int = 0) -> Node | None:
    rng = random.Random(seed)
    population: list[Node] = [ctx.root]
    for generation in range(generations):
        if ctx.out_of_time():
            break
        # The draws first (they depend on the population and the seed only), then the children, computed
        # together on the executor's workers and registered in draw order.
        draws = []
        for _ in range(population_size):
            if ctx.out_of_time():
                break
            parent = _tournament(population, rng)
            draws.append((parent, _mutation(ctx, parent, rng)))
        ctx.prefetch([(parent, c) for parent, c in draws if c is not None and ctx.planned_worth(parent, c)])
        offspring = []
        for parent, candidate in draws:
            if candidate is None or not ctx.worth_applying(parent, candidate):
                continue
            child = ctx.expand(parent, candidate)
            if child is not None and child.feasible:
                offspring.append(child)
        merged = {n.key: n for n in population + offspring}
        population = sorted(merged.values(), key=lambda n: (n.latency_s, n.key))[:population_size]
        ctx.progress(f"generation {generation + 1}: population {len(population)}, "
                     f"fastest {population[0].latency_s * 1e3:.4f} ms predicted")
    return ctx.best


def _tournament(population: list[Node], rng: random.Random, size: int = 3) -> Node:
    entrants = [rng.choice(population) for _ in range(min(size, len(population)))]
    return min(entrants, key=lambda n: (n.latency_s, n.key))


def _mutation(ctx: SearchContext, parent: Node, rng: random.Random) -> Candidate | None:
    """A random candidate step on `parent`, drawn with preference for larger predicted gains."""
    candidates = [c for c in ctx.candidates(parent) if c.predicted_s < parent.latency_s]
    if not candidates:
        return None
    gains = [parent.latency_s - c.predicted_s for c in candidates]
    return rng.choices(candidates, weights=gains, k=1)[0]
