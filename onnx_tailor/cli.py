"""The `onnx-tailor` command line. Thin: it parses, calls the library, prints.

Exit codes: 0 success; 1 bad input (missing or invalid model, unknown pass or
site, bad parameter); 2 bad usage (unknown option, missing argument);
3 an exact rewrite failed its numerical check (a bug: please report it).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from importlib.metadata import PackageNotFoundError, version

import click

from . import accuracy, api
from .costmodel import DEFAULT_TARGET, builtin_targets, fit_profile, load_target, measure_sweep, score
from .costmodel import simulate as npu_simulate
from .costmodel.regressor import write_measurements
from .costmodel.sweep import read_manifest, sweep_entries, write_sweep
from .errors import TailorError
from .ir import Model
from .ir.io import write_text_atomic
from .passes import Declined, Exactness, Site, all_passes, get_pass
from .search import check_plotting_available, format_report, plot_pareto, read_recipe

try:
    __version__ = version("onnx-tailor")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"


class _Group(click.Group):
    """Turns every `TailorError` into one line on stderr and its exit code: no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TailorError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)


def _parse_shape(ctx, param, values) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in values:
        name, sep, dims = value.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"'{value}' is not NAME=D1,D2,... with positive integers "
                                     "(e.g. x=1,3,224,224)") from None
    return shapes


def _parse_params(ctx, param, values) -> dict[str, str]:
    params = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{value}' is not key=value (e.g. multiple=32)")
        params[key] = raw
    return params


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, callback=_parse_shape, metavar="NAME=D1,D2,...",
    help="Concrete shape of a model input, for models with dynamic dimensions (repeat per input). "
         "A dynamic batch dimension alone defaults to 1.")


probe_data_option = click.option(
    "--data", metavar="D", help="Real inputs (an .npz or a folder of images) for a model whose shapes depend on "
                                "input values (the error says when); its first sample also gives the input shapes.")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _human_count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnx-tailor")
def main():
    """Fit a trained ONNX model to the accelerator it will run on.

    \b
    Start with:
      onnx-tailor optimize model.onnx --target npu-p32 --data eval.npz -o out.onnx
                                                the fastest variant within a 1-point accuracy budget
      onnx-tailor inspect model.onnx            what the model costs, its IBN blocks and expand-depthwise pairs
      onnx-tailor cost model.onnx --target cpu-ort      predicted latency on a target
      onnx-tailor passes                        the rewrites available
      onnx-tailor apply model.onnx --pass pad_channels --list-sites

    Every model is canonicalized on load (Constant nodes lifted, BatchNorm and constant
    scale/shift ops folded, constants folded); exact rewrites are checked numerically before anything is written.
    """


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("--target-multiple", "multiple", type=click.IntRange(min=1), default=32, show_default=True,
              help="Parallelism factor P: channel counts that are not a multiple of it are flagged.")
@click.option("--per-node", is_flag=True, help="Also print MACs, parameters and output size of every node.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")
@probe_data_option
def inspect(model, input_shapes, multiple, per_node, as_json, data):
    """Report MACs, parameters, peak activation memory, op counts, IBN blocks and expand-depthwise pairs of MODEL."""
    loaded = api.with_data(api.load(model, input_shapes), data)
    report = api.inspect(loaded)
    if as_json:
        payload = {"model": model, "multiple": multiple, **report.to_dict(multiple)}
        if not per_node:
            payload.pop("nodes")
        click.echo(json.dumps(payload, indent=2))
        return
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    shapes = ", ".join(f"{k}[{','.join(map(str, v))}]" for k, v in report.input_shapes.items())
    click.echo(f"{model}: {len(loaded.nodes)} nodes, inputs {shapes}")
    click.echo(f"  MACs              {_human_count(report.macs)}")
    click.echo(f"  parameters        {report.params:,} ({_human_bytes(report.param_bytes)})")
    click.echo(f"  peak activations  {_human_bytes(report.peak_activation_bytes)} (while {report.peak_at} runs)")
    click.echo("  ops               " + ", ".join(f"{op} {n}" for op, n in report.op_histogram.items()))
    _print_blocks(report, multiple)
    _print_pairs(report)
    if per_node:
        _print_nodes(loaded, report, multiple)


def _print_blocks(report, multiple: int) -> None:
    click.echo(f"\nInverted-bottleneck blocks: {len(report.blocks)}"
               + (f" (channels not a multiple of P={multiple} marked *)" if report.blocks else ""))
    if not report.blocks:
        return
    w = max(14, *(len(b.expand) for b in report.blocks))
    header = f"  {'#':>2}  {'expand':<{w}} {'in':>5} {'exp':>6} {'out':>5}  {'kernel':<6} {'stride':<6} " \
             f"{'input':<9} {'activation':<10} {'SE':<3} {'residual':<8}"
    click.echo(header)
    for i, b in enumerate(report.blocks, 1):
        bad = set(b.misaligned(multiple))

        def ch(name, value):
            return f"{value}{'*' if name in bad else ''}"

        res = f"{b.resolution[0]}x{b.resolution[1]}" if b.resolution else "?"
        click.echo(f"  {i:>2}  {b.expand:<{w}} {ch('in', b.in_channels):>5} {ch('expanded', b.expanded_channels):>6} "
                   f"{ch('out', b.out_channels):>5}  {b.kernel[0]}x{b.kernel[1]:<4} {b.stride[0]}x{b.stride[1]:<4} "
                   f"{res:<9} {b.expand_activation:<10} {'yes' if b.squeeze_excitation else '-':<3} "
                   f"{'yes' if b.residual else '-':<8}")


def _print_pairs(report) -> None:
    """Every expand-depthwise pair (fuse_ibn_expansion's sites, before its legality checks), and its IBN block."""
    click.echo(f"\nExpand-depthwise pairs: {len(report.pairs)}")
    if not report.pairs:
        return
    in_block = {b.expand: i for i, b in enumerate(report.blocks, 1)}
    w = max(14, *(len(p.expand) for p in report.pairs))
    d = max(14, *(len(p.depthwise) for p in report.pairs))
    click.echo(f"  {'#':>2}  {'expand':<{w}} {'depthwise':<{d}} {'in':>5} {'exp':>6}  {'kernel':<6} {'stride':<6} "
               f"{'input':<9} {'activation':<16} {'IBN block':<9}")
    for i, p in enumerate(report.pairs, 1):
        res = f"{p.resolution[0]}x{p.resolution[1]}" if p.resolution else "?"
        click.echo(f"  {i:>2}  {p.expand:<{w}} {p.depthwise:<{d}} {p.in_channels:>5} {p.expanded_channels:>6}  "
                   f"{p.kernel[0]}x{p.kernel[1]:<4} {p.stride[0]}x{p.stride[1]:<4} {res:<9} {p.activation:<16} "
                   f"{in_block.get(p.expand, '-')!s:<9}")


def _print_nodes(model: Model, report, multiple: int) -> None:
    w = max(24, *(len(c.name) for c in report.nodes))
    click.echo(f"\n  {'node':<{w}} {'op':<18} {'MACs':>10} {'params':>9} {'output':>10}")
    for cost in report.nodes:
        flag = ""
        node = model.node(cost.name)
        if node.op_type == "Conv":
            out_ch = (model.declared_shape(node.input[1]) or (0,))[0]
            flag = f"  {out_ch} channels, not a multiple of {multiple}" if out_ch % multiple else ""
        click.echo(f"  {cost.name:<{w}} {cost.op_type:<18} {_human_count(cost.macs):>10} {cost.params:>9,} "
                   f"{_human_bytes(cost.output_bytes):>10}{flag}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "target_name", default=DEFAULT_TARGET, show_default=True, metavar="NAME|PROFILE.json",
              help=f"A simulated NPU target ({', '.join(t for t in builtin_targets() if t.startswith('npu'))}) "
                   "or the path of an npu profile.")
@click.option("--per-op", is_flag=True, help="Print every executed kernel: cycles, bound, MAC utilization, spills.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@input_shape_option
@probe_data_option
def simulate(model, target_name, per_op, as_json, input_shapes, data):
    """Cycle-level latency of MODEL on a simulated NPU (the ground truth of npu-* targets).

    Ops are grouped into the kernels the NPU compiler would run (activations and
    constant scale/shift fused into the Conv/MatMul before them); each kernel costs
    max(compute, DRAM traffic) + dispatch. See shared/design/npu-target.md.
    """
    target = load_target(target_name)
    if not target.simulated:
        raise TailorError(f"target {target.name} is measured, not simulated; use `onnx-tailor cost`")
    loaded = api.with_data(api.load(model, input_shapes), data)
    result = npu_simulate(loaded, target)
    if as_json:
        click.echo(json.dumps({"model": model, **result.to_dict(per_kernel=per_op)}, indent=2))
        return
    rows = [k.to_dict(target.parallelism) for k in result.kernels]
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if per_op:
        shown = list(_executed_rows(rows))
        w = max(24, *(2 * depth + len(r["kernel"]) for depth, r in shown))
        click.echo(f"{'kernel':<{w}} {'ops':<28} {'cycles':>10} {'compute':>10} {'memory':>10} {'bound':<8} "
                   f"{'MAC util':>8}  spilled")
        for depth, r in shown:
            util = f"{r['mac_utilization']:.0%}" if r["mac_utilization"] is not None else "-"
            ops = "+".join(r["ops"]) + (f" x{r['repeats']}" if r.get("repeats", 1) != 1 else "")
            name = "  " * depth + r["kernel"]
            click.echo(f"{name:<{w}} {ops[:28]:<28} {r['cycles']:>10,.0f} {r['compute_cycles']:>10,} "
                       f"{r['memory_cycles']:>10,.0f} {r['bound']:<8} {util:>8}  {', '.join(r['spilled'])}")
        click.echo("")
    executed = sum(1 for r in rows if r["unit"] != "free")
    click.echo(f"{model} on {target.name}: {result.total_cycles:,.0f} cycles = {result.latency_s * 1e3:.3f} ms "
               f"({executed} kernels)")


def _executed_rows(rows: list[dict], depth: int = 0):
    """(depth, row) of every kernel that runs; a control-flow op's subgraph kernels follow it, one level deeper."""
    for row in rows:
        if row["unit"] == "free":
            continue
        yield depth, row
        yield from _executed_rows(row.get("body", []), depth + 1)


target_option = click.option(
    "--target", "target_name", default=DEFAULT_TARGET, show_default=True, metavar="NAME|PROFILE.json",
    help=f"Built-in target ({', '.join(builtin_targets())}) or the path of a profile.")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@target_option
@click.option("--per-op", is_flag=True, help="Print every executed kernel's predicted latency.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@input_shape_option
@probe_data_option
def cost(model, target_name, per_op, as_json, input_shapes, data):
    """Predicted latency and memory of MODEL on a target (the learned cost model).

    For simulated targets the simulator's ground truth is shown beside the
    prediction. The first use of a target fits its cost model from its
    measurements (seconds; cached afterwards).
    """
    target = load_target(target_name)
    loaded = api.with_data(api.load(model, input_shapes), data)
    result = score(loaded, target)
    if as_json:
        payload = {k: v for k, v in asdict(result).items() if per_op or k != "kernels"}
        click.echo(json.dumps({"model": model, **payload}, indent=2))
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if per_op:
        w = max(24, *(len(k.name) for k in result.kernels))
        click.echo(f"{'kernel':<{w}} {'ops':<28} {'predicted us':>12} {'simulated us':>12}")
        for k in result.kernels:
            sim = f"{k.simulated_s * 1e6:12.1f}" if k.simulated_s is not None else f"{'-':>12}"
            click.echo(f"{k.name:<{w}} {'+'.join(k.ops)[:28]:<28} {k.predicted_s * 1e6:12.1f} {sim}")
        click.echo("")
    click.echo(f"{model} on {target.name}")
    click.echo(f"  predicted latency  {result.latency_s * 1e3:.3f} ms")
    if result.simulated_s is not None:
        click.echo(f"  simulated latency  {result.simulated_s * 1e3:.3f} ms "
                   f"(prediction {result.latency_s / result.simulated_s - 1:+.1%})")
    click.echo(f"  parameters         {result.params:,} ({_human_bytes(result.param_bytes)})")
    click.echo(f"  peak activations   {_human_bytes(result.peak_activation_bytes)}")


@main.group()
def costmodel():
    """Build cost models: sweep microbenchmarks, measure them, fit a profile for a new device.

    \b
    A new device in three steps:
      onnx-tailor costmodel sweep -o sweep/ [--model m.onnx ...]    write the microbenchmarks
      (run them on the device; or here: onnx-tailor costmodel measure --target cpu-ort --sweep sweep/ -o m.csv)
      onnx-tailor costmodel fit --target cpu-ort --measurements m.csv --name mydev -o mydev.json
    """


@costmodel.command("sweep")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="Add entries at this model's kernels and neighbouring channel counts (repeatable).")
@click.option("--size", type=click.IntRange(min=10), default=600, show_default=True, help="Base sweep size.")
def costmodel_sweep(output, models, size):
    """Write the op sweep's microbenchmarks and their manifest.json."""
    entries = sweep_entries(size, [api.load(m) for m in models])
    path = write_sweep(entries, Path(output))
    click.echo(f"wrote {len(entries)} microbenchmarks and {path}", err=True)


@costmodel.command("measure")
@target_option
@click.option("--sweep", "sweep_dir", type=click.Path(file_okay=False), help="A sweep folder; default: the base sweep.")
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="Add entries around this model's kernels (repeatable).")
@click.option("--size", type=click.IntRange(min=10), default=600, show_default=True, help="Base sweep size.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The measurements CSV to write.")
def costmodel_measure(target_name, sweep_dir, models, size, output):
    """Measure the sweep on a target: timed with onnxruntime, or simulated for npu targets."""
    target = load_target(target_name)
    entries = read_manifest(sweep_dir) if sweep_dir else sweep_entries(size, [api.load(m) for m in models])
    start = time.perf_counter()

    def progress(done, total):
        if done % 50 == 0 or done == total:
            click.echo(f"  measured {done}/{total} ({time.perf_counter() - start:.0f} s)", err=True)

    measurements = measure_sweep(entries, target, progress)
    write_measurements(Path(output), measurements)
    click.echo(f"wrote {len(measurements.rows)} measurements to {output}", err=True)


@costmodel.command("fit")
@target_option
@click.option("--measurements", type=click.Path(dir_okay=False), required=True, help="CSV of id,latency_s.")
@click.option("--name", required=True, help="Name of the new target.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The profile .json to write.")
def costmodel_fit(target_name, measurements, name, output):
    """Build a target profile from measurements taken on a device.

    --target gives the base profile whose datasheet numbers (P, lanes, clock,
    memory, bandwidth, fusion) describe the device; the measurements are
    copied beside the new profile, which is then usable as --target OUTPUT.
    """
    fitted = fit_profile(load_target(target_name), measurements, name, output)
    model = fitted.cost_model
    click.echo(f"wrote {fitted.path} ({model.trained_rows} kernels learned; "
               f"kinds: {', '.join(sorted(model.regressors))})", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def passes(as_json):
    """List every rewrite pass: its name, whether it is exact or lossy, and what it does."""
    rows = [{"name": p.name, "exactness": p.exactness.value, "summary": p.summary,
             "params": {q.name: {"type": q.type.__name__, "default": q.default, "help": q.help, "allowed": q.allowed}
                        for q in p.params}}
            for p in all_passes().values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        click.echo(f"{row['name']:<{width}}  {row['exactness']:<5}  {row['summary']}")
        for name, spec in row["params"].items():
            bounds = "" if spec["allowed"].startswith("one of") else f", {spec['allowed']}"  # choices are in the help
            click.echo(f"{'':<{width}}         --param {name}=<{spec['type']}>  {spec['help']} "
                       f"(default {spec['default']}{bounds})")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@target_option
@click.option("--data", metavar="D", help="Accuracy data: an .npz, an image folder or 'random' (see `evaluate --help`). "
                                          "Without it only exact passes run.")
@click.option("--metric", metavar="NAME", help="top1 | agreement | cosine | sqnr | module:function "
                                               "[default: top1 with labels, else agreement]")
@click.option("--max-drop", default="1.0", show_default=True, metavar="POINTS|PCT%",
              help="Largest allowed drop of the metric against the original: points (1.0) or relative (1%).")
@click.option("--max-params", type=click.IntRange(min=1), metavar="BYTES", help="Budget for parameter bytes.")
@click.option("--max-activation", type=click.IntRange(min=1), metavar="BYTES", help="Budget for peak activation bytes.")
@click.option("--passes", "pass_list", metavar="A,B,C", help="Passes the search may use [default: all rewrites].")
@click.option("--search", type=click.Choice(["greedy", "beam", "evolutionary"]), default="greedy", show_default=True)
@click.option("--beam-width", type=click.IntRange(min=1), default=4, show_default=True,
              help="Sequences kept by beam search (and half the evolutionary population).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop searching after this long and keep the best so far.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data split and the search.")
@click.option("--emit", type=click.Choice(["fp32", "qdq"]), default="fp32", show_default=True,
              help="Write the optimized fp32 model, or its int8 QDQ quantization (calibrated on the calibration "
                   "split), the form NPU compilers take.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]),
              help="What accuracy is judged in: int8 quantizes every model with onnxruntime's static QDQ "
                   "quantization, calibrated on the calibration split, as the device runs it. "
                   "[default: the target's own: int8 for npu-*, fp32 for cpu-ort]")
@click.option("--acceptance", type=click.Choice(["margin", "point"]), default="margin", show_default=True,
              help="When a candidate holds the budget on the selection split: margin, when its drop plus one "
                   "standard error of the per-sample differences from the original does (a step that flips "
                   "samples pays for its uncertainty); point, when its drop alone does.")
@click.option("--split", "split", default=",".join(f"{f:g}" for f in accuracy.DEFAULT_SPLIT), show_default=True,
              metavar="CALIB,SELECT,TEST",
              help="Fractions of --data that passes fit on, that the search judges candidates on, and that "
                   "only the result is judged on (the drop the report quotes).")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Apply and evaluate candidates in N local processes; the result is the same bytes as with 1. "
                   "[default: the machine's cores]")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS",
              help="Apply and evaluate candidates on a Ray cluster instead (needs the 'ray' extra).")
@click.option("--cache-bytes", type=click.IntRange(min=0), metavar="BYTES",
              help="Memory each process may keep calibration tensors in across fits (0: none, every fit runs "
                   "its models again). [default: 1/8 of the machine's memory]")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The optimized model.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write report.json here.")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), help="Write recipe.json here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write the Pareto front (latency vs metric) as a PNG (needs the 'plot' extra).")
@click.option("--measure", is_flag=True, help="For measured targets: time original and optimized side by side.")
@click.option("--overwrite-input", is_flag=True, help="Allow OUTPUT to be the input file itself.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@input_shape_option
def optimize(model, target_name, data, metric, max_drop, max_params, max_activation, pass_list, search, beam_width,
             time_budget, seed, emit, precision, acceptance, split, workers, ray_address, cache_bytes, output,
             report_path, recipe_path, plot_path, measure, overwrite_input, quiet, as_json, input_shapes):
    """Find the fastest variant of MODEL on a target that keeps accuracy and memory in budget.

    \b
    Candidates (pass, site, params) are scored with the target's cost model;
    only those predicted faster are applied (lossy ones fitted on the calibration
    part of --data) and judged on the selection part against the original. The
    result is judged once more on the test part, which the search never saw:
    that is the drop the report quotes, and when the chosen model breaks the
    budget there, the best earlier model on its path that holds is written
    instead. The model, its report and its recipe are written; `apply MODEL
    --recipe R` replays the recipe to the same bytes. Ctrl-C or --time-budget
    stops the search with the best model so far.
    \b
    Exit codes: 0 written (improved, or the original unchanged when nothing
    helped: the report says why); 1 bad input; 2 bad usage; 3 a rewrite failed
    its numerical check (a bug); 4 no model meets the constraints.
    """
    if plot_path:
        check_plotting_available()  # before minutes of search, not after
    loaded = api.load(model, input_shapes)
    progress = None if quiet else (lambda message: click.echo(f"[optimize] {message}", err=True))
    result = api.optimize(loaded, target_name, data=data, metric=metric, max_drop=max_drop, max_params=max_params,
                          max_activation=max_activation,
                          passes=[p.strip() for p in pass_list.split(",") if p.strip()] if pass_list else None,
                          search=search, beam_width=beam_width, time_budget=time_budget, seed=seed, split=split,
                          precision=precision, acceptance=acceptance, measure=measure, progress=progress,
                          workers=workers, ray=ray_address, cache_bytes=cache_bytes)
    api.save(result.emitted(emit), output, input_path=model, overwrite_input=overwrite_input)
    if report_path:
        _write_json(report_path, result.report)
    if recipe_path:
        result.recipe.write(Path(recipe_path))
    if plot_path:
        plot_pareto(result.context, result.context.best, plot_path)
    click.echo(json.dumps(result.report, indent=2) if as_json else format_report(result.report))


def _apply_recipe(model, recipe_path, data, output, overwrite_input, input_shapes, emit):
    if not output:
        raise click.UsageError("give -o/--output")
    recipe = read_recipe(Path(recipe_path))
    if (recipe.needs_data or emit == "qdq") and not (data or (recipe.data or {}).get("source")):
        why = "this recipe has lossy steps" if recipe.needs_data else "--emit qdq calibrates the quantization on it"
        raise TailorError(f"{why}: give the --data the recipe was made with")
    result = api.apply_recipe(api.load(model, {**recipe.input_shapes, **input_shapes}), recipe, data, emit=emit)
    api.save(result, output, input_path=model, overwrite_input=overwrite_input)
    click.echo(f"replayed {len(recipe.steps)} step(s) of {recipe_path}; wrote {output}", err=True)


def _write_json(path, payload) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--pass", "pass_name", metavar="NAME", help="The pass to apply (see `onnx-tailor passes`).")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False),
              help="Replay a recipe written by `optimize` instead of one pass.")
@click.option("--data", metavar="D", help="Calibration data for lossy passes (its calibration half is used; "
                                          "see `evaluate --help`), or with --recipe the data it was fitted on.")
@click.option("--site", "anchor", metavar="ANCHOR", help="Apply at this site only (its anchor node name); default: every site.")
@click.option("--param", "params", multiple=True, callback=_parse_params, metavar="KEY=VALUE",
              help="A pass parameter, e.g. multiple=32 (repeatable).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the rewritten model.")
@click.option("--emit", type=click.Choice(["fp32", "qdq"]), default="fp32", show_default=True,
              help="With --recipe: the replayed fp32 model, or its int8 QDQ quantization as `optimize --emit qdq` "
                   "wrote it.")
@click.option("--list-sites", is_flag=True, help="List the sites (and the declined near-sites, with reasons); write nothing.")
@click.option("--overwrite-input", is_flag=True, help="Allow OUTPUT to be the input file itself.")
@input_shape_option
def apply(model, pass_name, recipe_path, data, anchor, params, output, emit, list_sites, overwrite_input, input_shapes):
    """Apply one pass to MODEL at one site or at all its sites, and write the result.

    Exact passes are verified against the input with onnxruntime (no graph
    optimizations, seeded inputs) before the model is written; the output is
    written atomically and the input file is never modified.
    """
    if recipe_path:
        return _apply_recipe(model, recipe_path, data, output, overwrite_input, input_shapes, emit)
    if emit != "fp32":
        raise click.UsageError("--emit qdq goes with --recipe (or with optimize)")
    if not pass_name:
        raise click.UsageError("give --pass NAME (see `onnx-tailor passes`) or --recipe RECIPE.json")
    rewrite = get_pass(pass_name)
    resolved = rewrite.resolve_params(params)  # unknown or malformed parameters fail before the model loads
    if not list_sites and not output:
        raise click.UsageError("give -o/--output, or --list-sites to only look")
    loaded = api.load(model, input_shapes)
    if list_sites:
        surveyed = list(rewrite.survey(loaded, resolved))
        for site in (s for s in surveyed if isinstance(s, Site)):
            click.echo(f"site      {site.anchor:<24} {site.summary}")
        for declined in (s for s in surveyed if isinstance(s, Declined)):
            click.echo(f"declined  {declined.anchor:<24} {declined.reason}")
        return
    lossy = rewrite.exactness is Exactness.LOSSY
    if lossy and not data:
        click.echo(f"warning: {pass_name} is lossy and no --data was given: fitted and judged on seeded random "
                   "inputs, which real data beats by far", err=True)
    result = api.apply(loaded, pass_name, anchor, params, data=data)
    api.save(result.model, output, input_path=model, overwrite_input=overwrite_input)
    if not result.sites:
        click.echo(f"{pass_name}: no site in {model}; wrote it unchanged to {output}", err=True)
        return
    click.echo(f"{pass_name}: rewrote {len(result.sites)} site(s) ({'lossy' if lossy else 'verified exact'}); "
               f"wrote {output}", err=True)
    for site, error in zip(result.sites, result.local_errors):
        shown = f"  local error {error:.4f}" if error is not None else ""
        click.echo(f"  {site.anchor:<24} {site.summary}{shown}", err=True)


# -- accuracy: evaluate and compare --------------------------------------------------------

_DATA_HELP = """
    \b
    --data is one of:
      FILE.npz   arrays keyed by model input name, samples first (a state [2,N,H] as [N,2,H], a
                 scalar input as [N]), and optional 'labels' (integers, [N])
      FOLDER     images, in one sub-folder per class for labels (sorted names -> 0..K-1);
                 needs Pillow: pip install 'onnx-tailor[images]'
      random     seeded inputs of the model's shape (--samples, --seed); no labels, so
                 only agreement, cosine and sqnr against a reference make sense
    \b
    --image-spec is JSON, inline or in a file; every field is optional:
      {"size": [H, W], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
       "order": "rgb" | "bgr", "layout": "nchw" | "nhwc"}
    Pixels are scaled to [0, 1], then (x - mean) / std per channel. Defaults: size
    and layout from the model's input shape, mean 0, std 1, rgb.
"""


def _data_options(command):
    options = [
        click.option("--data", required=True, metavar="D", help="An .npz file, a folder of images, or 'random'."),
        click.option("--image-spec", metavar="JSON|FILE", help="How to preprocess an image folder (see above)."),
        click.option("--samples", type=click.IntRange(min=1), default=64, show_default=True,
                     help="How many samples --data random makes."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of --data random."),
        click.option("--output-name", metavar="NAME",
                     help="The model output metrics read (default: the first; cosine and sqnr: all)."),
        click.option("--max-drop", type=click.FloatRange(min=0, min_open=True), metavar="BUDGET",
                     help="Warn when a 95% interval is wider (+-) than this, in the metric's units "
                          "(points for top1 and agreement, dB for sqnr)."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Samples per onnxruntime run."),
        input_shape_option,
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("evaluate", help="""Score MODEL on data: a metric with its 95% confidence interval and sample count.

    top1 needs labels; agreement, cosine and sqnr compare MODEL's outputs with the
    original model's (--reference). With --reference, top1 is printed together with
    agreement, the steadier signal for telling a rewrite's effect from noise.
    A plug-in metric is module:function (see onnx_tailor/accuracy/metrics.py).
""" + _DATA_HELP)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--metric", metavar="NAME",
              help="top1 | agreement | cosine | sqnr | module:function  [default: top1 when the data has "
                   "labels, else agreement]")
@click.option("--reference", type=click.Path(dir_okay=False), metavar="ORIGINAL",
              help="The original model, for agreement, cosine and sqnr.")
@_data_options
def evaluate_command(model, metric, reference, data, image_spec, samples, seed, output_name, max_drop, batch_size,
                     input_shapes, as_json):
    loaded = api.load(model, input_shapes)
    original = api.load(reference, input_shapes) if reference else None
    dataset = accuracy.load_data(data, loaded, image_spec=image_spec, samples=samples, seed=seed)
    metric = metric or accuracy.default_metric(dataset, original is not None)
    metrics = [metric] + (["agreement"] if metric == "top1" and original is not None else [])
    scores = accuracy.Evaluator(batch_size).scores(loaded, dataset, metrics, original, output_name)
    warnings = accuracy.interval_warnings([("", figure) for figure in scores.values()], max_drop)
    if as_json:
        click.echo(json.dumps({"model": model, "reference": reference, "data": str(dataset), "n": len(dataset),
                               "scores": {name: s.to_dict() for name, s in scores.items()},
                               "warnings": warnings}, indent=2))
        return
    click.echo(f"{model} on {dataset}" + (f", against {reference}" if reference else ""))
    for figure in scores.values():
        click.echo(f"  {figure}")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


_COMPARED_COSTS = ("macs", "params", "param_bytes", "peak_activation_bytes")  # of each model, in compare --json


@main.command("compare", help="""Compare models A and B side by side on the same data.

    Prints the task metric of each (top1 when the data has labels, or --metric
    module:function) with its 95% confidence interval, B's fidelity to A (agreement
    of predictions, cosine similarity and SQNR of outputs), and each model's MACs,
    parameters and peak activation memory.
""" + _DATA_HELP)
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@click.option("--metric", metavar="NAME",
              help="The task metric: top1 or module:function  [default: top1 when the data has labels]")
@_data_options
def compare_command(model_a, model_b, metric, data, image_spec, samples, seed, output_name, max_drop, batch_size,
                    input_shapes, as_json):
    a, b = api.load(model_a, input_shapes), api.load(model_b, input_shapes)
    dataset = accuracy.load_data(data, a, image_spec=image_spec, samples=samples, seed=seed)
    a, b = api.with_data(a, dataset), api.with_data(b, dataset)  # shapes that depend on values: probed on it
    costs = [api.inspect(a), api.inspect(b)]  # before any run: a model that needs --input-shape fails here
    result = accuracy.compare(a, b, dataset, metric, output=output_name, evaluator=accuracy.Evaluator(batch_size))
    if as_json:
        shown = [{figure: getattr(c, figure) for figure in _COMPARED_COSTS} for c in costs]
        click.echo(json.dumps(result.to_dict((model_a, model_b), shown, max_drop), indent=2))
        return
    rows = [("", "A", "B"), ("model", model_a, model_b)]
    if result.a is not None:
        rows.append((f"{result.a.name} (95% CI)", f"{result.a.shown} {result.a.interval}",
                     f"{result.b.shown} {result.b.interval}"))
    rows += [("MACs", *(_human_count(c.macs) for c in costs)),
             ("parameters", *(f"{c.params:,} ({_human_bytes(c.param_bytes)})" for c in costs)),
             ("peak activations", *(_human_bytes(c.peak_activation_bytes) for c in costs))]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    click.echo(f"data: {dataset}")
    for label, left, right in rows:
        click.echo(f"  {label:<{widths[0]}}  {left:<{widths[1]}}  {right}".rstrip())
    click.echo(f"B against A (n={result.n}):")
    for figure in result.fidelity.values():
        click.echo(f"  {figure}")
    for warning in result.interval_warnings(max_drop):
        click.echo(f"warning: {warning}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
