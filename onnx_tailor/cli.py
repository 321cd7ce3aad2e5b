"""The `onnx-tailor` command line. Thin: it parses, calls the library, prints.

Exit codes: 0 success; 1 bad input (missing or invalid model, unknown pass or
site, bad parameter); 2 bad usage (unknown option, missing argument);
3 an exact rewrite failed its numerical check (a bug: please report it).
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import PackageNotFoundError, version

import click

from . import api
from .costmodel import DEFAULT_TARGET, builtin_targets, load_target
from .costmodel import simulate as npu_simulate
from .errors import TailorError
from .ir import Model
from .passes import all_passes, get_pass

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
      onnx-tailor inspect model.onnx            what the model costs, and its IBN blocks
      onnx-tailor passes                        the rewrites available
      onnx-tailor apply model.onnx --pass pad_channels --list-sites
      onnx-tailor apply model.onnx --pass pad_channels --param multiple=32 -o out.onnx

    Every model is canonicalized on load (Constant nodes lifted, BatchNorm folded,
    constants folded); exact rewrites are checked numerically before anything is written.
    """


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("--target-multiple", "multiple", type=click.IntRange(min=1), default=32, show_default=True,
              help="Parallelism factor P: channel counts that are not a multiple of it are flagged.")
@click.option("--per-node", is_flag=True, help="Also print MACs, parameters and output size of every node.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")
def inspect(model, input_shapes, multiple, per_node, as_json):
    """Report MACs, parameters, peak activation memory, op counts and IBN blocks of MODEL."""
    loaded = api.load(model, input_shapes)
    report = api.inspect(loaded)
    if as_json:
        payload = {"model": model, "multiple": multiple, **report.to_dict(multiple)}
        if not per_node:
            payload.pop("nodes")
        click.echo(json.dumps(payload, indent=2))
        return
    shapes = ", ".join(f"{k}[{','.join(map(str, v))}]" for k, v in report.input_shapes.items())
    click.echo(f"{model}: {len(loaded.nodes)} nodes, inputs {shapes}")
    click.echo(f"  MACs              {_human_count(report.macs)}")
    click.echo(f"  parameters        {report.params:,} ({_human_bytes(report.param_bytes)})")
    click.echo(f"  peak activations  {_human_bytes(report.peak_activation_bytes)} (while {report.peak_at} runs)")
    click.echo("  ops               " + ", ".join(f"{op} {n}" for op, n in report.op_histogram.items()))
    _print_blocks(report, multiple)
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
def simulate(model, target_name, per_op, as_json, input_shapes):
    """Cycle-level latency of MODEL on a simulated NPU (the ground truth of npu-* targets).

    Ops are grouped into the kernels the NPU compiler would run (activations and
    constant scale/shift fused into the Conv/MatMul before them); each kernel costs
    max(compute, DRAM traffic) + dispatch. See shared/design/npu-target.md.
    """
    target = load_target(target_name)
    if not target.simulated:
        raise TailorError(f"target {target.name} is measured, not simulated; use `onnx-tailor cost`")
    loaded = api.load(model, input_shapes)
    result = npu_simulate(loaded, target)
    rows = [{"kernel": k.kernel.name, "ops": [k.kernel.op_type, *k.kernel.fused], "unit": k.unit,
             "compute_cycles": k.compute_cycles, "memory_cycles": round(k.memory_cycles, 1),
             "cycles": round(k.cycles, 1), "bound": k.bound, "dram_bytes": k.dram_bytes,
             "mac_utilization": k.utilization(target.parallelism), "spilled": list(k.spilled)}
            for k in result.kernels]
    if as_json:
        click.echo(json.dumps({"model": model, "target": target.name, "cycles": result.total_cycles,
                               "latency_ms": result.latency_s * 1e3, "warnings": result.warnings,
                               **({"kernels": rows} if per_op else {})}, indent=2))
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if per_op:
        w = max(24, *(len(r["kernel"]) for r in rows))
        click.echo(f"{'kernel':<{w}} {'ops':<28} {'cycles':>10} {'compute':>10} {'memory':>10} {'bound':<8} "
                   f"{'MAC util':>8}  spilled")
        for r in rows:
            if r["unit"] == "free":
                continue
            util = f"{r['mac_utilization']:.0%}" if r["mac_utilization"] is not None else "-"
            ops = "+".join(r["ops"])
            click.echo(f"{r['kernel']:<{w}} {ops[:28]:<28} {r['cycles']:>10,.0f} {r['compute_cycles']:>10,} "
                       f"{r['memory_cycles']:>10,.0f} {r['bound']:<8} {util:>8}  {', '.join(r['spilled'])}")
        click.echo("")
    executed = sum(1 for r in rows if r["unit"] != "free")
    click.echo(f"{model} on {target.name}: {result.total_cycles:,.0f} cycles = {result.latency_s * 1e3:.3f} ms "
               f"({executed} kernels)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def passes(as_json):
    """List every rewrite pass: its name, whether it is exact or lossy, and what it does."""
    rows = [{"name": p.name, "exactness": p.exactness.value, "summary": p.summary,
             "params": {q.name: {"type": q.type.__name__, "default": q.default, "help": q.help} for q in p.params}}
            for p in all_passes().values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        click.echo(f"{row['name']:<{width}}  {row['exactness']:<5}  {row['summary']}")
        for name, spec in row["params"].items():
            click.echo(f"{'':<{width}}         --param {name}=<{spec['type']}>  {spec['help']} (default {spec['default']})")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--pass", "pass_name", required=True, metavar="NAME", help="The pass to apply (see `onnx-tailor passes`).")
@click.option("--site", "anchor", metavar="ANCHOR", help="Apply at this site only (its anchor node name); default: every site.")
@click.option("--param", "params", multiple=True, callback=_parse_params, metavar="KEY=VALUE",
              help="A pass parameter, e.g. multiple=32 (repeatable).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the rewritten model.")
@click.option("--list-sites", is_flag=True, help="List the sites (and the declined near-sites, with reasons); write nothing.")
@click.option("--overwrite-input", is_flag=True, help="Allow OUTPUT to be the input file itself.")
@input_shape_option
def apply(model, pass_name, anchor, params, output, list_sites, overwrite_input, input_shapes):
    """Apply one pass to MODEL at one site or at all its sites, and write the result.

    Exact passes are verified against the input with onnxruntime (no graph
    optimizations, seeded inputs) before the model is written; the output is
    written atomically and the input file is never modified.
    """
    rewrite = get_pass(pass_name)
    rewrite.resolve_params(params)  # unknown or malformed parameters fail before the model loads
    if not list_sites and not output:
        raise click.UsageError("give -o/--output, or --list-sites to only look")
    loaded = api.load(model, input_shapes)
    if list_sites:
        for site in rewrite.find(loaded, **params):
            click.echo(f"site      {site.anchor:<24} {site.summary}")
        for declined in rewrite.declined(loaded, **params):
            click.echo(f"declined  {declined.anchor:<24} {declined.reason}")
        return
    result = api.apply(loaded, pass_name, anchor, params)
    api.save(result.model, output, input_path=model, overwrite_input=overwrite_input)
    if not result.sites:
        click.echo(f"{pass_name}: no site in {model}; wrote it unchanged to {output}", err=True)
        return
    check = "verified exact" if rewrite.exactness.value == "exact" else "lossy"
    click.echo(f"{pass_name}: rewrote {len(result.sites)} site(s) ({check}); wrote {output}", err=True)
    for site in result.sites:
        click.echo(f"  {site.anchor:<24} {site.summary}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
