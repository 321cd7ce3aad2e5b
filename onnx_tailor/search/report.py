"""What an optimize run tells its user: report.json, the terminal table, the Pareto plot.

The report explains every decision: the accuracy of the result on the test
split, which the search never saw (`test`; the `metric` and `drop` of each
model and step are on the selection split the search chose with); the chosen
steps with their predicted latency, accuracy and memory, and whether each was
accepted on measurement (timed against its parent, on targets measured here)
or on the cost model alone; for every inverted-bottleneck block of the
original, what happened to it (rewritten by which pass, or left alone and
why: predicted slower, accuracy over budget, local error too large, memory
over budget, or never reached); and the search's statistics.
"""

from __future__ import annotations

import math

from ..analysis import find_ibn_blocks
from ..costmodel import simulate
from ..errors import TailorError
from .context import Node, SearchContext

_PRECEDENCE = ("over the budget", "too large", "not measurably faster", "predicted slower")  # the most telling reason wins


def node_summary(node: Node) -> dict:
    return {"steps": len(node.steps), "predicted_latency_ms": node.latency_s * 1e3,
            "param_bytes": node.param_bytes, "peak_activation_bytes": node.activation_bytes,
            "metric": node.score.to_dict() if node.score is not None else None,
            "drop": node.drop if node.score is not None else None, "local_error": node.local_error}


def block_decisions(ctx: SearchContext, chosen: Node) -> list[dict]:
    """Per IBN block of the original: what the search did with it, and why."""
    taken = {(s.pass_name, s.anchor) for s in chosen.steps}
    decisions = []
    for index, block in enumerate(find_ibn_blocks(ctx.original), 1):
        entries = [e for e in ctx.log if set(e["nodes"]) & block.nodes]
        applied = sorted({e["step"]["pass"] for e in entries if (e["step"]["pass"], e["step"]["anchor"]) in taken})
        if applied:
            decision, why = "rewritten", f"by {', '.join(applied)}"
        elif not entries:
            decision, why = "left alone", "no candidate reached it (no applicable pass, or the budget ran out)"
        else:
            reasons = [e["outcome"] for e in entries if e["outcome"] != "feasible"]
            ranked = sorted(reasons, key=lambda r: next((i for i, p in enumerate(_PRECEDENCE) if p in r),
                                                         len(_PRECEDENCE)))
            decision = "left alone"
            why = ranked[0] if ranked else "a feasible rewrite existed but a faster sequence was chosen"
        decisions.append({"block": index, "expand": block.expand, "channels": [block.in_channels,
                          block.expanded_channels, block.out_channels], "resolution": block.resolution,
                          "stride": list(block.stride), "decision": decision, "why": why})
    return decisions


def build_report(ctx: SearchContext, chosen: Node, search: str, notes: list[str], measured: dict | None,
                 test: dict | None = None) -> dict:
    original = ctx.root
    steps, path = [], []
    node = ctx.root
    for step in chosen.steps:  # re-walk the chosen path through the cache for per-step figures
        path.append(step)
        node = next((n for n in ctx.evaluated if n.steps == tuple(path)), None)
        comparison = ctx.measured.comparisons.get(node.key) if node else None
        steps.append({**step.to_dict(), **(node_summary(node) if node else {}),
                      "accepted_on": "measurement" if comparison else "cost model",
                      "measured": comparison.to_dict() if comparison else None})
    return {
        "target": ctx.target.name,
        "search": search,
        "original": node_summary(original),
        "optimized": node_summary(chosen),
        "speedup_predicted": original.latency_s / chosen.latency_s if chosen.latency_s else None,
        "test": test,
        "steps": steps,
        "blocks": block_decisions(ctx, chosen),
        "statistics": ctx.stats.to_dict(),
        "simulated": _simulated(ctx, chosen),
        "measured": measured,
        "notes": notes,
    }


def _simulated(ctx: SearchContext, chosen: Node) -> dict | None:
    if not ctx.target.simulated:
        return None
    return {"original_ms": simulate(ctx.original, ctx.target).latency_s * 1e3,
            "optimized_ms": simulate(chosen.model, ctx.target).latency_s * 1e3}


def decimals(*pairs: tuple[float, float], least: int = 2, most: int = 8) -> int:
    """Enough decimals that no change is rounded away: each (before, after) pair that differs prints
    differently, and so does its difference (cosine 1.00 -> 1.00, drop 0.00 hid a drop of 0.0021)."""
    places = least
    for before, after in pairs:
        if before is None or after is None or before == after or not math.isfinite(before - after):
            continue
        while places < most and (f"{before:.{places}f}" == f"{after:.{places}f}"
                                 or float(f"{before - after:.{places}f}") == 0):
            places += 1
    return places


def format_report(report: dict) -> str:
    o, b = report["original"], report["optimized"]
    lines = [f"target {report['target']}, search {report['search']}: "
             f"{o['predicted_latency_ms']:.4f} ms -> {b['predicted_latency_ms']:.4f} ms predicted "
             f"({report['speedup_predicted']:.2f}x)"]
    test = report.get("test")
    if test:
        ci = test["drop_ci"]
        d = decimals((test["original"]["value"], test["optimized"]["value"]), (test["drop"], 0.0),
                     (test["allowed_drop"], 0.0))
        interval = f", 95% CI [{ci[0]:.{d}f}, {ci[1]:.{d}f}]" if ci else ""
        lines.append(f"  {test['original']['name']} in {test['precision']} on the test split (n={test['n']}, never seen "
                     f"by the search): {test['original']['value']:.{d}f} -> {test['optimized']['value']:.{d}f} "
                     f"(drop {test['drop']:.{d}f}{interval}; budget {test['allowed_drop']:.{d}f})")
        if test.get("fp32"):
            f32 = test["fp32"]
            d = decimals((f32["original"]["value"], f32["optimized"]["value"]))
            lines.append(f"  the same in fp32: {f32['original']['value']:.{d}f} -> {f32['optimized']['value']:.{d}f}")
        d = decimals((o["metric"]["value"], b["metric"]["value"]), (b["drop"], 0.0))
        lines.append(f"  on the selection split the search chose with (n={b['metric']['n']}): "
                     f"{o['metric']['value']:.{d}f} -> {b['metric']['value']:.{d}f} (drop {b['drop']:.{d}f})")
    lines.append(f"  parameters {o['param_bytes']:,} B -> {b['param_bytes']:,} B; "
                 f"peak activations {o['peak_activation_bytes']:,} B -> {b['peak_activation_bytes']:,} B")
    if report.get("simulated"):
        sim = report["simulated"]
        lines.append(f"  simulated (ground truth): {sim['original_ms']:.4f} ms -> {sim['optimized_ms']:.4f} ms "
                     f"({sim['original_ms'] / sim['optimized_ms']:.2f}x)")
    if report.get("measured"):
        m = report["measured"]
        speedup = m.get("speedup") or m["original_ms"] / m["optimized_ms"]
        chained = " (each step against its parent, as the search timed them)" if m.get("source") else ""
        lines.append(f"  measured on {m['target']}: {m['original_ms']:.3f} ms -> {m['optimized_ms']:.3f} ms "
                     f"({speedup:.2f}x){chained}")
    if report["steps"]:
        on_measurement = any(s.get("measured") for s in report["steps"])
        lines.append("\n  step  rewrite" + " " * 45 + "latency ms   metric   local err"
                     + ("   measured" if on_measurement else ""))
        for i, s in enumerate(report["steps"], 1):
            name = f"{s['pass']}@{s['anchor']}"
            metric = f"{s['metric']['value']:.2f}" if s.get("metric") else "-"
            err = f"{s['local_error']:.3f}" if s.get("local_error") is not None else "-"
            timed = f" {s['measured']['speedup']:>9.3f}x" if s.get("measured") else ""
            lines.append(f"  {i:>4}  {name[:50]:<52} {s.get('predicted_latency_ms', 0):>10.4f} {metric:>8} {err:>10}"
                         + timed)
        if on_measurement:
            lines.append("  every step was accepted on measurement: timed side by side with its parent "
                         "(the measured column) and kept only when measurably faster")
    if report["blocks"]:
        lines.append("\n  IBN block decisions:")
        for d in report["blocks"]:
            ch = "/".join(map(str, d["channels"]))
            res = "x".join(map(str, d["resolution"])) if d["resolution"] else "?"
            lines.append(f"  {d['block']:>4}  {res:>9} {ch:<14} {d['decision']:<11} {d['why']}")
    s = report["statistics"]
    lines.append(f"\n  {s['candidates_scored']} candidates scored, {s['candidates_applied']} applied, "
                 f"{s['candidates_evaluated']} evaluated in {s['seconds']:.1f} s")
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def check_plotting_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TailorError("--plot needs matplotlib: pip install 'onnx-tailor[plot]'") from None


def plot_pareto(ctx: SearchContext, chosen: Node, path) -> None:
    """Latency against accuracy of every evaluated variant, with the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(n.latency_s * 1e3, n.score.value if n.score is not None else 0.0, n.feasible) for n in ctx.evaluated]
    higher = ctx.data.original_score.higher_is_better if ctx.data else True
    front, best = [], None
    for latency, value, _ in sorted(points):
        if best is None or (value > best if higher else value < best):
            front.append((latency, value))
            best = value
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[0] for p in points if p[2]], [p[1] for p in points if p[2]], s=14, label="feasible variants")
    ax.scatter([p[0] for p in points if not p[2]], [p[1] for p in points if not p[2]], s=14, marker="x",
               color="tab:red", label="infeasible variants")
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:green", label="Pareto front")
    ax.scatter([ctx.root.latency_s * 1e3], [points[0][1]], s=60, marker="s", color="black", label="original")
    ax.scatter([chosen.latency_s * 1e3], [chosen.score.value if chosen.score is not None else 0.0], s=80,
               marker="*", color="tab:orange", label="chosen")
    ax.set_xlabel(f"predicted latency on {ctx.target.name} (ms)")
    ax.set_ylabel(ctx.data.metric if ctx.data else "metric")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
