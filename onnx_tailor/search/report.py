"""What an optimize run tells its user: report.json, the terminal table, the Pareto plot.

The report explains every decision: the accuracy of the result on the test
split, which the search never saw (`test`; the `metric` and `drop` of each
model and step are on the selection split the search chose with); the chosen
steps with their predicted latency, accuracy and memory, and whether each was
accepted on measurement (timed against its parent, on targets measured here)
or on the cost model alone; for every inverted-bottleneck block of the
original, what happened to it (rewritten by which pass, or left alone and
why: predicted slower, accuracy over budget, local error too large, memory
over budget, or never reached); why the search stopped, with what became of
every candidate still open on the chosen model (per pass) and the ceiling
(the predicted latency with every candidate applied whatever its accuracy);
and the search's statistics.

report.json is versioned (`format`, REPORT_FORMAT) and described by the JSON
Schema in `onnx_tailor/schemas/report.schema.json`; every latency in it is in
milliseconds (keys end in `_ms`). A new key may appear within a format version;
a key that changes meaning or type gets a new version.
"""

from __future__ import annotations

import math
import os
import shutil
import textwrap

from ..analysis import analyze, find_ibn_blocks
from ..costmodel import simulate
from ..errors import TailorError
from ..version import __version__
from .context import (FEASIBLE, LOCAL_ERROR_TOO_LARGE, NOT_MEASURABLY_FASTER, OTHER, OVER_ACCURACY_BUDGET,
                      OVER_MEMORY_BUDGET, PREDICTED_SLOWER, Node, SearchContext)

REPORT_FORMAT = "onnx-tailor-report/1"
# Why a block was left alone, as a code a pipeline can match: the fates its candidates met (the search
# log's codes), most telling first; its `why` is the words noted with the first of them.
REASONS = (OVER_ACCURACY_BUDGET, LOCAL_ERROR_TOO_LARGE, NOT_MEASURABLY_FASTER, PREDICTED_SLOWER, OVER_MEMORY_BUDGET,
           OTHER)


def node_summary(node: Node) -> dict:
    return {"step_count": len(node.steps), "predicted_latency_ms": node.latency_s * 1e3,
            "param_bytes": node.param_bytes, "peak_activation_bytes": node.activation_bytes,
            "metric": node.score.to_dict() if node.score is not None else None,
            "drop": node.drop if node.score is not None else None, "local_error": node.local_error}


def block_name(node_names) -> str:
    """The model's own name of a block: the longest '/'-separated prefix the names of its nodes
    share (`/blocks/blocks.8`, as PyTorch's exporter names module paths), or '' when they share none.
    Give the nodes the user's exporter named (expand, project, residual): a node that canonicalization
    made has a name of its own."""
    parts = [n.split("/")[:-1] for n in node_names]  # the last part names the op, not the module
    common = os.path.commonprefix(parts) if len(parts) > 1 else []
    return "/".join(common) if any(common) else ""


def block_decisions(ctx: SearchContext, chosen: Node) -> list[dict]:
    """Per IBN block of the original: what the search did with it, and why (as codes and in words)."""
    taken = {(s.pass_name, s.anchor) for s in chosen.steps}
    decisions = []
    blocks = find_ibn_blocks(ctx.original)
    names = [block_name([b.expand, b.project] + ([b.residual] if b.residual else [])) for b in blocks]
    # A prefix two blocks share (a flat exporter's '/model') names neither: the expand conv's name does.
    names = [n if n and names.count(n) == 1 else b.expand for n, b in zip(names, blocks)]
    for index, (block, name) in enumerate(zip(blocks, names), 1):
        entries = [e for e in ctx.log if set(e["nodes"]) & block.nodes]
        applied = sorted({e["step"]["pass"] for e in entries if (e["step"]["pass"], e["step"]["anchor"]) in taken})
        failed = [e for e in entries if e["fate"] != FEASIBLE]
        reasons = sorted({e["fate"] for e in failed}, key=REASONS.index)
        if applied:
            decision, reasons, why = "rewritten", [], f"by {', '.join(applied)}"
        elif not entries:
            decision, reasons = "left alone", ["not_reached"]
            why = "no candidate reached it (no applicable pass, or the budget ran out)"
        elif not failed:
            decision, reasons = "left alone", ["outpaced"]
            why = "a feasible rewrite existed but a faster sequence was chosen"
        else:
            decision = "left alone"
            why = min(failed, key=lambda e: REASONS.index(e["fate"]))["outcome"]
        decisions.append({"index": index, "name": name, "expand": block.expand,
                          "channels": [block.in_channels, block.expanded_channels, block.out_channels],
                          "resolution": list(block.resolution) if block.resolution else None,
                          "stride": list(block.stride), "decision": decision, "rewritten_by": applied,
                          "reasons": reasons, "why": why})
    return decisions


def build_report(ctx: SearchContext, chosen: Node, search: str, notes: list[str], measured: dict | None,
                 test: dict | None = None, stopped: dict | None = None, run: dict | None = None) -> dict:
    """The report (see the module docstring); `stopped` says why the search ended (`optimize._why_stopped`);
    `run` holds what only the caller knows: the invocation, the budgets, and the booleans within_budget,
    improved, interrupted, time_budget_exhausted."""
    original = ctx.root
    steps, path = [], []
    for step in chosen.steps:  # re-walk the chosen path through the cache for per-step figures
        path.append(step)
        node = next((n for n in ctx.evaluated if n.steps == tuple(path)), None)
        comparison = ctx.measured.comparisons.get(node.key) if node else None
        steps.append({**step.to_dict(), "change": node.change if node else "", **(node_summary(node) if node else {}),
                      "accepted_on": "measurement" if comparison else "cost model",
                      "measured": comparison.to_dict() if comparison else None})
    run = run or {}
    summaries = []
    for node in (original, chosen):
        summary = node_summary(node)
        summary["macs"] = analyze(node.model).macs
        summaries.append(summary)
    return {
        "format": REPORT_FORMAT,
        "tool_version": __version__,
        "invocation": run.get("invocation"),
        "within_budget": run.get("within_budget", chosen.feasible),
        "improved": run.get("improved", bool(chosen.steps)),
        "interrupted": run.get("interrupted", False),
        "time_budget_exhausted": run.get("time_budget_exhausted", False),
        "budget": run.get("budget"),
        "target": ctx.target.name,
        "search": search,
        "original": summaries[0],
        "optimized": summaries[1],
        "speedup_predicted": original.latency_s / chosen.latency_s if chosen.latency_s else None,
        "test": test,
        "steps": steps,
        "blocks": block_decisions(ctx, chosen),
        "statistics": ctx.stats.to_dict(),
        "stopped": stopped,
        "simulated": _simulated(ctx, chosen),
        "measured": measured,
        "notes": notes,
    }


def _simulated(ctx: SearchContext, chosen: Node) -> dict | None:
    if not ctx.target.simulated:
        return None
    return {"original_ms": simulate(ctx.original, ctx.target).latency_s * 1e3,
            "optimized_ms": simulate(chosen.model, ctx.target).latency_s * 1e3}


# -- the terminal table ---------------------------------------------------------------------


def faster_but_larger(report: dict) -> str | None:
    """One line when the optimized model is faster but bigger in parameters or MACs, else None:
    so that growing numbers beside a speed-up do not read as a regression."""
    o, b = report["original"], report["optimized"]
    speedup = report.get("speedup_predicted") or 0
    grown = [(what, b[key] / o[key]) for what, key in (("parameters", "param_bytes"), ("MACs", "macs"))
             if o.get(key) and b.get(key, 0) > o[key]]
    if speedup <= 1 or not grown:
        return None
    sizes = ", ".join(f"{what} {ratio:.2f}x" for what, ratio in grown)
    return f"  faster but larger: {sizes}, for {speedup:.2f}x the predicted speed"


def _number(score: dict | None, value) -> str:
    """A metric value as its unit reads: 2 decimals for percent and dB, 4 for a cosine or a plug-in's."""
    if value is None or isinstance(value, str):  # "inf" for an SQNR of identical outputs
        return str(value) if value is not None else "-"
    digits = 2 if score and score.get("unit") in ("%", "dB") else 4
    return f"{value:.{digits}f}"


def _width() -> int:
    return max(80, min(shutil.get_terminal_size((100, 24)).columns, 140))


def _step_rows(report: dict, width: int) -> list[str]:
    steps = report["steps"]
    if not steps:
        return []
    metric = next((s["metric"] for s in steps if s.get("metric")), None)
    metric_head = f"{metric['name']}{' %' if metric['unit'] == '%' else ' dB' if metric['unit'] == 'dB' else ''}" \
        if metric else "metric"
    metric_head += " (sel.)" if metric else ""
    on_measurement = any(s.get("measured") for s in steps)
    timed_head = f"{'measured':>9}  " if on_measurement else ""
    head = (f"  {'step':>4}  {'predicted ms':>12}  {metric_head:>{max(8, len(metric_head))}}  {'local err':>9}  "
            + timed_head)
    indent = " " * len(head)
    lines = ["", head + "rewrite: pass at site [parameters]"]
    wrap = max(30, width - len(head))
    for i, s in enumerate(steps, 1):
        value = _number(s.get("metric"), s["metric"]["value"]) if s.get("metric") else "-"
        err = f"{s['local_error']:.3f}" if s.get("local_error") is not None else "-"
        latency = f"{s['predicted_latency_ms']:.4f}" if s.get("predicted_latency_ms") is not None else "-"
        params = " ".join(f"{k}={v}" for k, v in s["params"].items())
        # A node name is never cut: it runs past the width rather than lose the part that tells sites apart.
        wrapped = textwrap.wrap(f"{s['pass']} at {s['anchor']}", wrap, break_long_words=False,
                                break_on_hyphens=False, subsequent_indent="  ")
        wrapped += textwrap.wrap(f"[{params}]", wrap, initial_indent="  ", subsequent_indent="   ") if params else []
        # What this step did: what tells apart the same pass at the same site taken twice.
        wrapped += textwrap.wrap(s.get("change") or "", wrap, initial_indent="  ", subsequent_indent="  ")
        timed = (f"{s['measured']['speedup']:>8.3f}x  " if s.get("measured") else f"{'-':>9}  ") \
            if on_measurement else ""
        lines.append(f"  {i:>4}  {latency:>12}  {value:>{max(8, len(metric_head))}}  {err:>9}  {timed}{wrapped[0]}")
        lines += [indent + more for more in wrapped[1:]]
    if on_measurement:
        lines.append("  every step was accepted on measurement: timed side by side with its parent "
                     "(the measured column) and kept only when measurably faster")
    return lines


def _block_rows(report: dict, width: int) -> list[str]:
    blocks = report["blocks"]
    if not blocks:
        return []
    w = max(5, *(len(d["name"]) for d in blocks))
    head = f"  {'block':<{w}}  {'input':>9}  {'channels in/exp/out':<19}  {'decision':<10}  "
    lines = ["", "  Inverted-bottleneck blocks (named as in the model):", head + "why"]
    wrap = max(30, width - len(head))
    for d in blocks:
        channels = "/".join(map(str, d["channels"]))
        res = "x".join(map(str, d["resolution"])) if d["resolution"] else "?"
        wrapped = textwrap.wrap(d["why"], wrap) or [""]
        lines.append(f"  {d['name']:<{w}}  {res:>9}  {channels:<19}  {d['decision']:<10}  {wrapped[0]}")
        lines += [" " * len(head) + more for more in wrapped[1:]]
    return lines


def decimals(*pairs: tuple[float, float], least: int = 2, most: int = 8) -> int:
    """Enough decimals that no change is rounded away: each (before, after) pair that differs prints
    differently, and so does its difference (cosine 1.00 -> 1.00, drop 0.00 hid a drop of 0.0021)."""
    places = least
    for before, after in pairs:
        if not all(isinstance(v, (int, float)) for v in (before, after)) or before == after \
                or not math.isfinite(before - after):
            continue
        while places < most and (f"{before:.{places}f}" == f"{after:.{places}f}"
                                 or float(f"{before - after:.{places}f}") == 0):
            places += 1
    return places


def _fixed(value, places: int) -> str:
    """`value` with `places` decimals; a string ("inf", an SQNR of identical outputs) as it is."""
    return value if isinstance(value, str) else f"{value:.{places}f}"


def format_report(report: dict, width: int | None = None) -> str:
    width = width or _width()
    o, b = report["original"], report["optimized"]
    lines = [f"target {report['target']}, search {report['search']}: "
             f"{o['predicted_latency_ms']:.4f} ms -> {b['predicted_latency_ms']:.4f} ms predicted "
             f"({report['speedup_predicted']:.2f}x)"]
    test = report.get("test")
    if test:
        ci = test["drop_ci"]
        d = decimals((test["original"]["value"], test["optimized"]["value"]), (test["drop"], 0.0),
                     (test["allowed_drop"], 0.0))
        interval = f", 95% CI [{_fixed(ci[0], d)}, {_fixed(ci[1], d)}]" if ci else ""
        lines.append(f"  {test['original']['name']} in {test['precision']} on the test split (n={test['n']}, never seen "
                     f"by the search): {_fixed(test['original']['value'], d)} -> "
                     f"{_fixed(test['optimized']['value'], d)} "
                     f"(drop {_fixed(test['drop'], d)}{interval}; budget {_fixed(test['allowed_drop'], d)})")
        if test.get("fp32"):
            f32 = test["fp32"]
            d = decimals((f32["original"]["value"], f32["optimized"]["value"]))
            lines.append(f"  the same in fp32: {_fixed(f32['original']['value'], d)} -> "
                         f"{_fixed(f32['optimized']['value'], d)}")
        d = decimals((o["metric"]["value"], b["metric"]["value"]), (b["drop"], 0.0))
        lines.append(f"  on the selection split the search chose with (n={b['metric']['n']}): "
                     f"{_fixed(o['metric']['value'], d)} -> {_fixed(b['metric']['value'], d)} (drop {_fixed(b['drop'], d)})")
    lines.append(f"  parameters {o['param_bytes']:,} B -> {b['param_bytes']:,} B; "
                 f"peak activations {o['peak_activation_bytes']:,} B -> {b['peak_activation_bytes']:,} B"
                 + (f"; MACs {o['macs']:,} -> {b['macs']:,}" if "macs" in o else ""))
    larger = faster_but_larger(report)
    if larger:
        lines.append(larger)
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
    lines += _step_rows(report, width)
    lines += _block_rows(report, width)
    lines += _format_stopped(report.get("stopped"))
    s = report["statistics"]
    lines.append(f"\n  {s['candidates_scored']} candidates scored, {s['candidates_applied']} applied, "
                 f"{s['candidates_evaluated']} evaluated in {s['seconds']:.1f} s")
    flags = [word for key, word in (("interrupted", "interrupted (Ctrl-C)"),
                                    ("time_budget_exhausted", "the time budget ran out")) if report.get(key)]
    if flags:
        lines.append(f"  stopped early: {', '.join(flags)}; the best model so far was written")
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _format_stopped(stopped: dict | None) -> list[str]:
    if not stopped:
        return []
    c = stopped["ceiling"]
    if c is None:
        lines = [f"\n  search stopped: {stopped['why']}; no time was left to walk to the ceiling"]
    else:
        simulated = f", simulated {c['simulated_ms']:.4f} ms" if "simulated_ms" in c else ""
        lines = [f"\n  search stopped: {stopped['why']}; ceiling {c['predicted_ms']:.4f} ms predicted "
                 f"({c['speedup_predicted']:.2f}x{simulated}"
                 f"{'' if c['complete'] else ', walk cut short by the time budget'}): "
                 f"{c['share_taken']:.0%} of the predicted gain available was taken"]
    for pass_name, fates in sorted(stopped["remaining"].items()):
        shown = "; ".join(f"{count} {fate}" for fate, count in sorted(fates.items(), key=lambda f: -f[1]))
        lines.append(f"    {pass_name}: {shown}")
    return lines


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
