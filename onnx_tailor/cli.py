"""The `onnx-tailor` command line. Thin: it parses, calls the library, prints.

Exit codes: 0 success; 1 bad input (missing or invalid model, data, recipe or
target profile, unknown pass or site, bad parameter, a size too big to
allocate) or an output that cannot be written (a missing or read-only folder,
a full disk: checked before the work starts where it can be); 2 bad usage
(unknown option, missing argument, a value out of range or that does not
parse, e.g. `--max-drop abc`); 3 an exact rewrite failed its numerical check
(a bug: please report it); 4 `optimize`: no model meets the constraints;
5 `compare --fail-over X`: B is worse than A by more than X; 130 interrupted
(Ctrl-C; during `optimize`'s search it first writes the best model found so
far and its report, which says `"interrupted": true`). Any other exit, or a
traceback, is a bug.

Every long command (optimize, evaluate, compare, costmodel measure) reports progress on stderr,
each line prefixed with the seconds elapsed: `--quiet` silences it, `-v`
adds every candidate's fate, `--log-file F` keeps all of it (with -v's
detail and timestamps) in F whatever the terminal shows.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import sys
import time
from pathlib import Path

import click

from . import accuracy, api
from .costmodel import DEFAULT_TARGET, builtin_targets, fit_profile, load_target, measure_sweep, score
from .costmodel import simulate as npu_simulate
from .costmodel.anchor import anchored_cost_model, measured_elsewhere
from .costmodel.netfactor import write_training_networks
from .costmodel.profile import measurements_from_profiles
from .costmodel.regressor import write_measurements
from .costmodel.sweep import read_manifest, sweep_entries, write_sweep
from .errors import TailorError
from .ir import Model
from .ir.io import Outputs, check_outputs, ensure_not_input
from .passes import Declined, Exactness, Site, all_passes, get_pass
from .search import (SPLIT_PARTS, check_plotting_available, format_report, parse_max_drop, plot_pareto,
                     read_recipe, split_part)
from .version import __version__


# What the machine refuses (a read-only folder, a full disk, a quota): the user's to fix, so one line, exit 1.
_ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class _Group(click.Group):
    """Turns every `TailorError`, and what the machine refuses (no space, no permission, no memory
    for a size the input asked for), into one line on stderr and an exit code: no traceback."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as error:  # click would print the usage block and a blank line before it
            where = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
            click.echo(f"error: {error.format_message().rstrip('.')}{where}", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TailorError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:  # the shell's convention, 128 + SIGINT; optimize handles its own first
            click.echo("interrupted", err=True)
            sys.exit(INTERRUPTED)
        except OSError as error:
            if error.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f"{error.filename}: " if error.filename else ""
            click.echo(f"error: {where}{error.strerror or error}", err=True)
            sys.exit(1)
        except MemoryError as error:  # a backstop: sizes are checked before allocating where we know them
            click.echo(f"error: out of memory: {str(error).strip() or 'an allocation failed'}", err=True)
            sys.exit(1)


INTERRUPTED = 130  # exit code after Ctrl-C
COMPARE_FAILED = 5  # exit code of `compare --fail-over` when B is worse than A by more than allowed


class _PositiveNumber(click.FloatRange):
    """A float above 0 that is finite: click's range lets 'nan' (no comparison fails it) and 'inf' through."""

    name = "positive number"

    def __init__(self):
        super().__init__(min=0, min_open=True)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


POSITIVE = _PositiveNumber()
# A sweep is one microbenchmark model per entry, each timed for seconds: past this it never ends.
SWEEP_SIZE = click.IntRange(10, 100_000)
# numpy's generators take seeds in [0, 2**32) the same on every platform; a negative seed is refused by name.
SEED = click.IntRange(0, 2**32 - 1)


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


# Said wherever --metric is: a plug-in is code, and it runs the moment it is named.
PLUGIN_NOTE = ("A module:function plug-in is imported from the Python path or else the current directory, "
               "which runs the module's code: name only code you trust.")


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


def _log_options(command):
    """-v/--verbose, --quiet and --log-file, for every command that runs long."""
    options = [
        click.option("-v", "--verbose", is_flag=True, help="More progress: every candidate's fate."),
        click.option("--quiet", is_flag=True, help="No progress on stderr."),
        click.option("--log-file", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Write all progress, with -v's detail and timestamps, to FILE."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


class _Elapsed(logging.Formatter):
    def __init__(self, command: str, start: float):
        super().__init__()
        self.command, self.start = command, start

    def format(self, record: logging.LogRecord) -> str:
        return f"[{self.command} {record.created - self.start:6.1f} s] {record.getMessage()}"


def _start_logging(command: str, verbose: bool, quiet: bool, log_file: str | None):
    """Route the library's log (logger `onnx_tailor`) to stderr and --log-file; returns a progress
    callback that logs at INFO. The handlers go when the command ends (tests run many in one process)."""
    logger = logging.getLogger("onnx_tailor")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handlers: list[logging.Handler] = []
    if not quiet:
        terminal = logging.StreamHandler(sys.stderr)
        terminal.setLevel(logging.DEBUG if verbose else logging.INFO)
        terminal.setFormatter(_Elapsed(command, time.time()))
        handlers.append(terminal)
    if log_file:
        try:
            kept = logging.FileHandler(log_file, mode="w", encoding="utf-8")
        except OSError as exc:
            raise TailorError(f"--log-file {log_file}: {exc.strerror}") from None
        kept.setLevel(logging.DEBUG)
        kept.setFormatter(logging.Formatter(f"%(asctime)s {command} %(levelname)s %(message)s"))
        handlers.append(kept)
    for handler in handlers:
        logger.addHandler(handler)

    def close():
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()

    click.get_current_context().call_on_close(close)
    return logger.info


def _check_max_drop(ctx, param, value):
    """A budget that does not parse is a usage error (2), found before any model loads."""
    if value is None:
        return None
    try:
        parse_max_drop(value)
    except TailorError as error:
        raise click.BadParameter(str(error).removeprefix("--max-drop ")) from None
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="onnx-tailor")
def main():
    """Fit a trained ONNX model to the accelerator it will run on.

    \b
    Start with (from the repository root, on the bundled model):
      onnx-tailor optimize models/digits_mbv2.onnx --target npu-p32 --data models/digits_eval.npz -o digits.npu-p32.onnx
                         the fastest variant within a 1-point accuracy budget
      onnx-tailor inspect models/digits_mbv2.onnx
                         what the model costs, its IBN blocks and expand-depthwise pairs
      onnx-tailor cost models/digits_mbv2.onnx --target cpu-ort
                         predicted latency on a target
      onnx-tailor targets                       the targets and their parameters (docs/npu-target.md)
      onnx-tailor passes                        the rewrites available
      onnx-tailor apply models/digits_mbv2.onnx --pass pad_channels --list-sites

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
@click.option("--canonical", is_flag=True,
              help="Count ops and find the peak-memory node in the canonical form that passes and recipes see, "
                   "instead of in MODEL as given.")
@probe_data_option
def inspect(model, input_shapes, multiple, per_node, as_json, canonical, data):
    """Report MACs, parameters, peak activation memory, op counts, IBN blocks and expand-depthwise pairs of MODEL.

    Op counts and the node at peak activation memory are those of MODEL as given (a node
    without a name is shown by its op and the tensor it writes); --canonical shows them in
    the canonical form (BatchNorm and constant scale/shift folded, HardSwish as the ops
    passes see). MACs, parameters, blocks and pairs are always counted on the canonical form,
    whose node names `apply --site` and recipes use.

    \b
    Examples:
      onnx-tailor inspect models/digits_mbv2.onnx
      onnx-tailor inspect models/digits_mbv2.onnx --canonical --json
    """
    report = api.inspect(model, input_shapes, data=data, canonical=canonical)
    if as_json:
        payload = {"model": model, "multiple": multiple, **report.to_dict(multiple)}
        if not per_node:
            payload.pop("nodes")
        click.echo(json.dumps(payload, indent=2))
        return
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    shapes = ", ".join(f"{k}[{','.join(map(str, v))}]" for k, v in report.input_shapes.items())
    click.echo(f"{model}: {sum(report.op_histogram.values())} nodes {report.form}, inputs {shapes}")
    click.echo(f"  MACs              {_human_count(report.macs)}")
    click.echo(f"  parameters        {report.params:,} ({_human_bytes(report.param_bytes)})")
    click.echo(f"  peak activations  {_human_bytes(report.peak_activation_bytes)} (while {report.peak_at} runs)")
    click.echo("  ops               " + ", ".join(f"{op} {n}" for op, n in report.op_histogram.items()))
    _print_blocks(report, multiple)
    _print_pairs(report)
    if per_node:
        _print_nodes(api.with_data(api.load(model, input_shapes), data), report, multiple)


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
    """Every node; the nodes of a control-flow body follow their If/Loop/Scan, named by their path
    (their MACs are one run of the body; the If/Loop/Scan's own row counts the runs)."""
    names = [f"{c.body}/{c.name}" if c.body else c.name for c in report.nodes]
    w = min(72, max(24, *(len(n) for n in names)))  # a longer name runs into its row rather than widen all
    click.echo(f"\n  {'node':<{w}} {'op':<18} {'MACs':>10} {'params':>9} {'output':>10}")
    for name, cost in zip(names, report.nodes):
        flag = ""
        if cost.op_type == "Conv" and not cost.body:
            out_ch = (model.declared_shape(model.node(cost.name).input[1]) or (0,))[0]
            flag = f"  {out_ch} channels, not a multiple of {multiple}" if out_ch % multiple else ""
        click.echo(f"  {name:<{w}} {cost.op_type:<18} {_human_count(cost.macs):>10} {cost.params:>9,} "
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
    max(compute, DRAM traffic) + dispatch. docs/npu-target.md in the repository
    describes the machine and every formula; `onnx-tailor targets` lists the parameters.

    \b
    Examples:
      onnx-tailor simulate models/digits_mbv2.onnx --target npu-p32
      onnx-tailor simulate models/digits_mbv2.onnx --target npu-p16 --per-op
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
@click.option("--anchor", is_flag=True,
              help="Measured targets: re-time a few dozen of the sweep's kernels now and scale every prediction "
                   "by how much slower or faster this machine runs them than when the sweep was measured.")
@input_shape_option
@probe_data_option
def cost(model, target_name, per_op, as_json, anchor, input_shapes, data):
    """Predicted latency and memory of MODEL on a target (the learned cost model).

    For simulated targets the simulator's ground truth is shown beside the
    prediction. The first use of a target fits its cost model from its
    measurements (seconds; cached afterwards). --json gives latencies in ms.
    A measured target's sweep records the machine's speed when it was
    measured; --anchor (about 10 s) corrects for its speed now, not for
    shapes the cost model gets wrong.

    \b
    Examples:
      onnx-tailor cost models/digits_mbv2.onnx --target npu-p32 --per-op
      onnx-tailor cost models/digits_mbv2.onnx --target cpu-ort --json
      onnx-tailor cost models/digits_mbv2.onnx --target cpu-ort --anchor
    """
    target = load_target(target_name)
    loaded = api.with_data(api.load(model, input_shapes), data)
    cost_model, anchoring, factor = anchored_cost_model(target) if anchor else (None, None, None)
    result = score(loaded, target, cost_model=cost_model)
    elsewhere = None if anchor else measured_elsewhere(target)
    if as_json:
        anchored = {} if anchoring is None else {"anchor": {"factor": factor, "kernels": len(anchoring.now_s),
                                                            "overhead_ms": anchoring.overhead_s * 1e3,
                                                            "took_s": anchoring.took_s}}
        elsewhere_note = {"measured_on_another_machine": elsewhere} if elsewhere else {}
        click.echo(json.dumps({"model": model, **result.to_dict(per_kernel=per_op), **anchored, **elsewhere_note},
                              indent=2))
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if elsewhere:
        click.echo(f"note: {target.name}'s kernels were measured on another machine ({elsewhere}): absolute times "
                   "may be off by a common factor, rankings hold. --anchor re-times a few of them here (about "
                   "10 s); `onnx-tailor costmodel --help` says how to measure this machine (minutes).", err=True)
    if per_op:
        w = max(24, *(len(k.name) for k in result.kernels))
        click.echo(f"{'kernel':<{w}} {'ops':<28} {'predicted us':>12} {'simulated us':>12}")
        for k in result.kernels:
            sim = f"{k.simulated_s * 1e6:12.1f}" if k.simulated_s is not None else f"{'-':>12}"
            click.echo(f"{k.name:<{w}} {'+'.join(k.ops)[:28]:<28} {k.predicted_s * 1e6:12.1f} {sim}")
        click.echo("")
    click.echo(f"{model} on {target.name}")
    click.echo(f"  predicted latency  {result.latency_s * 1e3:.3f} ms")
    if anchoring is not None:
        click.echo(f"  re-anchored        x{factor:.3f}: {len(anchoring.now_s)} of the sweep's kernels ran that many "
                   f"times as long now as when it was measured ({anchoring.took_s:.1f} s)")
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
      measure them: here, on a target this machine runs:
        onnx-tailor costmodel measure --target cpu-ort --sweep sweep/ -o m.csv
      or on the device (it needs only onnxruntime), then read its profiles here:
        python sweep/profile_on_device.py --provider XYZExecutionProvider --threads 1
        onnx-tailor costmodel measure --sweep sweep/ --profiles sweep/profiles -o m.csv
      onnx-tailor costmodel fit --target cpu-ort --measurements m.csv --name mydev -o mydev.json
    Either way each kernel is timed inside a small network by onnxruntime's
    profiler (its own nodes' times), not alone, and whole training networks
    are timed beside them (`network:` rows), from which `fit` learns how a
    whole network's run relates to the sum of its kernels.
    """


@costmodel.command("sweep")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Folder to write into.")
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="Add entries at this model's kernels and neighbouring channel counts (repeatable).")
@click.option("--size", type=SWEEP_SIZE, default=600, show_default=True, help="Base sweep size.")
def costmodel_sweep(output, models, size):
    """Write the op sweep's microbenchmarks and their manifest.json."""
    entries = sweep_entries(size, [api.load(m) for m in models])
    path = write_sweep(entries, Path(output))
    networks = write_training_networks(Path(output))
    click.echo(f"wrote {len(entries)} microbenchmarks, {len(networks)} training networks and {path}", err=True)


@costmodel.command("measure")
@target_option
@click.option("--sweep", "sweep_dir", type=click.Path(file_okay=False), help="A sweep folder; default: the base sweep.")
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="Add entries around this model's kernels (repeatable).")
@click.option("--size", type=SWEEP_SIZE, default=600, show_default=True, help="Base sweep size.")
@click.option("--profiles", "profiles_dir", type=click.Path(file_okay=False),
              help="Read the sweep's kernel times from the profiles profile_on_device.py wrote on a device "
                   "(with --sweep; nothing is run here).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The measurements CSV to write.")
@_log_options
def costmodel_measure(target_name, sweep_dir, models, size, profiles_dir, output, verbose, quiet, log_file):
    """Measure the sweep on a target: each kernel profiled inside a small network with onnxruntime, or
    simulated for npu targets; or read the profiles a device wrote (--profiles)."""
    check_outputs(output)  # before minutes of measuring
    log = _start_logging("measure", verbose, quiet, log_file)
    if profiles_dir:
        if not sweep_dir:
            raise click.UsageError("--profiles reads the profiles of a sweep folder: give --sweep too")
        measurements = measurements_from_profiles(sweep_dir, profiles_dir)
        write_measurements(Path(output), measurements)
        click.echo(f"wrote {len(measurements.rows)} measurements to {output}", err=True)
        return
    target = load_target(target_name)
    entries = read_manifest(sweep_dir) if sweep_dir else sweep_entries(size, [api.load(m) for m in models])

    def progress(done, total):
        if done % 50 == 0 or done == total or verbose:
            log(f"measured {done}/{total}")

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
    factor = (f"; kernels scaled x{model.network_factor:.3f} to whole training networks"
              if model.network_factor != 1.0 else "")
    click.echo(f"wrote {fitted.path} ({model.trained_rows} kernels learned; "
               f"kinds: {', '.join(sorted(model.regressors))}{factor})", err=True)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def passes(as_json):
    """List every rewrite pass: its name, whether it is exact or lossy, what it does, and its parameters.

    \b
    Examples:
      onnx-tailor passes --json
    """
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


def _target_parameters(row: dict) -> list[tuple[str, str]]:
    """(label, value) of a target's parameters as `targets` prints them: those its kind uses."""
    shown = [("parallelism P", str(row["parallelism"])), ("vector lanes V", str(row["vector_lanes"]))]
    if row["kind"] == "ort":
        shown = [("execution provider", row["execution_provider"]), ("threads", str(row["threads"])),
                 ("roofline hints", f"P={row['parallelism']}, V={row['vector_lanes']}")]
    shown += [("clock", f"{row['clock_hz'] / 1e9:g} GHz"),
              ("on-chip memory", _human_bytes(row["sram_bytes"])),
              ("DRAM bandwidth", f"{row['dram_bytes_per_cycle']:g} B/cycle"),
              ("dispatch", f"{row['dispatch_cycles']} cycles per kernel"),
              ("element size", f"{row['element_bytes']} B: accuracy judged in {row['precision']}"),
              ("fused activations", ", ".join(row["fusable_activations"]) or "-")]
    if row.get("grouped_activations"):
        shown.append(("grouped activations", ", ".join(row["grouped_activations"])
                      + " (spelled out as several ops, each runs as one kernel of its own)"))
    shown.append(("measurements", row["measurements"] or "-"))
    return shown


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print every profile field as JSON.")
def targets(as_json):
    """List every built-in target with its parameters.

    \b
    npu-*    the simulated NPU (docs/npu-target.md): `simulate` is its ground truth
    cpu-ort  onnxruntime on this machine's CPU, timed
    Any of them, or the path of a profile .json, is a --target. Example:
      onnx-tailor targets --json
    """
    rows = [load_target(name).to_dict() for name in builtin_targets()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for index, row in enumerate(rows):
        kind = {"npu": "simulated", "ort": "measured with onnxruntime", "import": "imported measurements"}
        click.echo(("\n" if index else "") + f"{row['name']}  ({kind.get(row['kind'], row['kind'])})")
        click.echo(f"  {row['description']}")
        for label, value in _target_parameters(row):
            click.echo(f"  {label:<19} {value}")


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@target_option
@click.option("--data", metavar="D", help="Accuracy data: an .npz, an image folder or 'random' (see `evaluate --help`). "
                                          "Without it only exact passes run.")
@click.option("--metric", metavar="NAME", help="top1 | agreement | cosine | sqnr | module:function "
                                               "[default: top1 with labels, else agreement]. " + PLUGIN_NOTE)
@click.option("--max-drop", callback=_check_max_drop, metavar="DROP|PCT%",
              help="Largest allowed drop of the metric against the original, in the metric's units (points of "
                   "100 for top1 and agreement, a fraction of 1 for cosine, dB for sqnr) or relative to the "
                   "original's score (1%). [default: top1, agreement 1; cosine 0.01; sqnr 3 (dB)]")
@click.option("--max-params", type=click.IntRange(min=1), metavar="BYTES", help="Budget for parameter bytes.")
@click.option("--max-activation", type=click.IntRange(min=1), metavar="BYTES", help="Budget for peak activation bytes.")
@click.option("--passes", "pass_list", metavar="A,B,C", help="Passes the search may use [default: all rewrites].")
@click.option("--search", type=click.Choice(["greedy", "beam", "evolutionary"]), default="greedy", show_default=True)
@click.option("--beam-width", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Sequences kept by beam search (and half the evolutionary population).")
@click.option("--time-budget", type=POSITIVE, metavar="SECONDS",
              help="Stop searching after this long and keep the best so far.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the data split and the search.")
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
              help="Preview, apply and evaluate candidates in N local processes, one thread each; the result is "
                   "the same bytes as with 1. Starting workers costs seconds: on a small model 1 can be "
                   "faster. [default: the cores this process may use]")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS",
              help="Apply and evaluate candidates on a Ray cluster instead (needs the 'ray' extra).")
@click.option("--cache-bytes", type=click.IntRange(min=0), metavar="BYTES",
              help="Memory each process may keep calibration tensors in across fits (0: none, every fit runs "
                   "its models again). [default: 1/8 of the machine's memory, split among --workers]")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The optimized model.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write report.json here.")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), help="Write recipe.json here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write the Pareto front (latency vs metric) as a PNG (needs the 'plot' extra).")
@click.option("--measure", is_flag=True, help="For measured targets: time original and optimized side by side.")
@click.option("--overwrite-input", is_flag=True, help="Allow OUTPUT to be the input file itself.")
@_log_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
@input_shape_option
def optimize(model, target_name, data, metric, max_drop, max_params, max_activation, pass_list, search, beam_width,
             time_budget, seed, emit, precision, acceptance, split, workers, ray_address, cache_bytes, output,
             report_path, recipe_path, plot_path, measure, overwrite_input, verbose, quiet, log_file, as_json,
             input_shapes):
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
    stops the search with the best model so far. The budget as understood is
    printed before the search starts.
    \b
    Exit codes: 0 written (improved, or the original unchanged when nothing
    helped: the report says why); 1 bad input; 2 bad usage; 3 a rewrite failed
    its numerical check (a bug); 4 no model meets the constraints; 130
    interrupted by Ctrl-C, after writing the best model so far, its report and
    recipe. report.json follows onnx_tailor/schemas/report.schema.json.
    """
    if plot_path:
        check_plotting_available()  # before minutes of search, not after
    check_outputs(output, report_path, recipe_path, plot_path)  # likewise: a typo in a folder fails now
    ensure_not_input(output, model, overwrite_input)
    progress = _start_logging("optimize", verbose, quiet, log_file)
    loaded = api.load(model, input_shapes)
    result = api.optimize(loaded, target_name, data=data, metric=metric, max_drop=max_drop, max_params=max_params,
                          max_activation=max_activation,
                          passes=[p.strip() for p in pass_list.split(",") if p.strip()] if pass_list else None,
                          search=search, beam_width=beam_width, time_budget=time_budget, seed=seed, split=split,
                          precision=precision, acceptance=acceptance, measure=measure, progress=progress,
                          workers=workers, ray=ray_address, cache_bytes=cache_bytes)
    result.report["invocation"].update(model=str(model), output=str(output), emit=emit,
                                       report=str(report_path) if report_path else None,
                                       recipe=str(recipe_path) if recipe_path else None)
    with Outputs() as written:  # all of them or none: a failure on one leaves none written
        written.write_model(result.emitted(emit), output, input_path=model, overwrite_input=overwrite_input)
        if report_path:
            written.write_text(report_path, json.dumps(result.report, indent=2) + "\n")
        if recipe_path:
            written.write_text(recipe_path, result.recipe.to_json(recipe_path))
        if plot_path:
            plot_pareto(result.context, result.context.best, written.reserve(plot_path, suffix=".png"))
        written.commit()
    click.echo(json.dumps(result.report, indent=2) if as_json else format_report(result.report))
    if result.report["interrupted"]:
        sys.exit(INTERRUPTED)


def _apply_recipe(model, recipe_path, data, output, overwrite_input, input_shapes, emit):
    if not output:
        raise click.UsageError("give -o/--output")
    check_outputs(output)
    recipe = read_recipe(Path(recipe_path))
    if (recipe.needs_data or emit == "qdq") and not (data or recipe.data_source):
        why = "this recipe has lossy steps" if recipe.needs_data else "--emit qdq calibrates the quantization on it"
        raise TailorError(f"{why}: give the --data the recipe was made with")
    result = api.apply_recipe(api.load(model, {**recipe.input_shapes, **input_shapes}), recipe, data, emit=emit)
    api.save(result, output, input_path=model, overwrite_input=overwrite_input)
    click.echo(f"replayed {len(recipe.steps)} step(s) of {recipe_path}; wrote {output}", err=True)


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
    written atomically and the input file is never modified. The output keeps
    MODEL's doc_string and metadata_props and records the tool version in them
    (with --recipe also onnx_tailor.recipe_hash and onnx_tailor.target).

    \b
    Examples:
      onnx-tailor apply models/digits_mbv2.onnx --pass pad_channels --list-sites
      onnx-tailor apply models/digits_mbv2.onnx --pass fold_batchnorm -o digits.folded.onnx
      onnx-tailor apply models/digits_mbv2.onnx --pass fuse_ibn_expansion --site /blocks/blocks.0/body/body.0/Conv --data models/digits_eval.npz -o digits.fused.onnx
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
    if output and not list_sites:
        check_outputs(output)  # before the rewrite and its verification, not after
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
    \b
    To reproduce an optimize report's figures, score the part of its data it
    quotes: --recipe R.json --split test (the same data, seed and fractions;
    --data defaults to the recipe's). The report's test figures are in its
    precision: for int8 compare the `--emit qdq` models, or read its fp32 line.
"""


def _renamed_max_drop(ctx, param, value):
    if value is not None:
        raise click.UsageError("--max-drop is optimize's budget; here the interval warning is --ci-width, "
                               "and `compare --fail-over X` fails when B is worse than A by more than X")


def _data_options(command):
    options = [
        click.option("--data", metavar="D", help="An .npz file, a folder of images, or 'random' "
                                                 "[required unless --recipe names the data]."),
        click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), metavar="R.json",
                     help="The recipe of an optimize run: its data, seed and split fractions (with --split)."),
        click.option("--split", "part", type=click.Choice(SPLIT_PARTS),
                     help="Score only this part of the recipe's split (test: the drop the report quotes)."),
        click.option("--image-spec", metavar="JSON|FILE", help="How to preprocess an image folder (see above)."),
        click.option("--samples", type=click.IntRange(min=1), default=64, show_default=True,
                     help="How many samples --data random makes."),
        click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of --data random."),
        click.option("--output-name", metavar="NAME",
                     help="The model output metrics read (default: the first; cosine and sqnr: all)."),
        click.option("--ci-width", type=POSITIVE, metavar="WIDTH",
                     help="Warn when a 95% interval is wider (+-) than this, in the metric's units "
                          "(points for top1 and agreement, dB for sqnr): a change that small is noise."),
        click.option("--max-drop", hidden=True, expose_value=False, callback=_renamed_max_drop),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                     help="Samples per onnxruntime run."),
        input_shape_option,
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
        _log_options,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _dataset(model, data, recipe_path, part, image_spec, samples, seed):
    """The data to score on: --data, or the recipe's; with --split, only that part of the recipe's split."""
    if part and not recipe_path:
        raise click.UsageError("--split needs --recipe: the split is the one that optimize run made")
    recipe = read_recipe(Path(recipe_path)) if recipe_path else None
    source = data or (recipe.data_source if recipe else None)
    if source is None:
        raise click.UsageError("give --data" + (" (this recipe names no data file: made without data, or with "
                                                "arrays in memory)" if recipe else ""))
    # The recipe's own data is loaded as optimize loaded it ('random': its default samples and seed).
    generated = {} if recipe is not None and not data else {"samples": samples, "seed": seed}
    dataset = accuracy.load_data(source, model, image_spec=image_spec, **generated)
    return split_part(recipe, dataset, part) if part else dataset


@main.command("evaluate", help="""Score MODEL on data: a metric with its 95% confidence interval and sample count.

    top1 needs labels; agreement, cosine and sqnr compare MODEL's outputs with the
    original model's (--reference). With --reference, top1 is printed together with
    agreement, the steadier signal for telling a rewrite's effect from noise.
    A plug-in metric is module:function (see onnx_tailor/accuracy/metrics.py).
    """ + PLUGIN_NOTE + "\n" + _DATA_HELP)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--metric", metavar="NAME",
              help="top1 | agreement | cosine | sqnr | module:function  [default: top1 when the data has "
                   "labels, else agreement]")
@click.option("--reference", type=click.Path(dir_okay=False), metavar="ORIGINAL",
              help="The original model, for agreement, cosine and sqnr.")
@_data_options
def evaluate_command(model, metric, reference, data, recipe_path, part, image_spec, samples, seed, output_name,
                     ci_width, batch_size, input_shapes, as_json, verbose, quiet, log_file):
    progress = _start_logging("evaluate", verbose, quiet, log_file)
    loaded = api.load(model, input_shapes)
    original = api.load(reference, input_shapes) if reference else None
    dataset = _dataset(loaded, data, recipe_path, part, image_spec, samples, seed)
    metric = metric or accuracy.default_metric(dataset, original is not None)
    metrics = [metric] + (["agreement"] if metric == "top1" and original is not None else [])
    progress(f"scoring {', '.join(metrics)} on {dataset}")
    scores = accuracy.Evaluator(batch_size).scores(loaded, dataset, metrics, original, output_name)
    warnings = accuracy.interval_warnings([("", figure) for figure in scores.values()], ci_width)
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
    parameters and peak activation memory; with --target, each one's predicted
    latency there (and the simulated one on npu-* targets).

    --fail-over X gates a pipeline, as Polygraphy's `run --atol` does: exit code 5
    when B is worse than A by more than X, in the task metric's units (top1: points),
    or without a task metric in agreement (100 - agreement, points) or else cosine
    (1 - cosine). Exit codes: 0 compared (and within --fail-over); 1 bad input;
    2 bad usage; 5 over --fail-over.
""" + PLUGIN_NOTE + "\n" + _DATA_HELP)
@click.argument("model_a", type=click.Path(dir_okay=False))
@click.argument("model_b", type=click.Path(dir_okay=False))
@click.option("--metric", metavar="NAME",
              help="The task metric: top1 or module:function  [default: top1 when the data has labels]")
@click.option("--target", "target_name", metavar="NAME|PROFILE.json",
              help="Also show each model's predicted latency on this target (see `cost`).")
@click.option("--fail-over", type=click.FloatRange(min=0), metavar="X",
              help="Exit with code 5 when B is worse than A by more than X (see above).")
@_data_options
def compare_command(model_a, model_b, metric, target_name, fail_over, data, recipe_path, part, image_spec, samples,
                    seed, output_name, ci_width, batch_size, input_shapes, as_json, verbose, quiet, log_file):
    progress = _start_logging("compare", verbose, quiet, log_file)
    target = load_target(target_name) if target_name else None  # an unknown target fails before any run
    a, b = api.load(model_a, input_shapes), api.load(model_b, input_shapes)
    dataset = _dataset(a, data, recipe_path, part, image_spec, samples, seed)
    a, b = api.with_data(a, dataset), api.with_data(b, dataset)  # shapes that depend on values: probed on it
    costs = [api.inspect(a), api.inspect(b)]  # before any run: a model that needs --input-shape fails here
    latencies = [score(m, target) for m in (a, b)] if target else None
    progress(f"running A and B on {dataset}")
    result = accuracy.compare(a, b, dataset, metric, output=output_name, evaluator=accuracy.Evaluator(batch_size))
    gate_metric, drop = result.drop()
    failed = fail_over is not None and drop > fail_over + 1e-9
    if as_json:
        shown = [{figure: getattr(c, figure) for figure in _COMPARED_COSTS} for c in costs]
        if latencies:
            for side, cost_report in zip(shown, latencies):
                side.update(target=target.name, predicted_latency_ms=cost_report.latency_s * 1e3,
                            simulated_latency_ms=(cost_report.simulated_s * 1e3
                                                  if cost_report.simulated_s is not None else None))
        payload = result.to_dict((model_a, model_b), shown, ci_width)
        payload["drop"] = {"metric": gate_metric, "value": drop, "fail_over": fail_over, "failed": failed}
        click.echo(json.dumps(payload, indent=2))
    else:
        _print_comparison(model_a, model_b, dataset, result, costs, latencies, target)
        units = " points" if gate_metric in ("top1", "agreement") else ""
        click.echo(f"B's drop against A: {drop:.4g}{units} of {gate_metric}" + (" (B is better)" if drop < 0 else "")
                   + (f"; --fail-over {fail_over:g}" if fail_over is not None else ""))
        for warning in result.interval_warnings(ci_width):
            click.echo(f"warning: {warning}", err=True)
    if failed:
        click.echo(f"fail: B's {gate_metric} is worse than A's by {drop:.4g}, over --fail-over {fail_over:g}", err=True)
        sys.exit(COMPARE_FAILED)


def _print_comparison(model_a, model_b, dataset, result, costs, latencies, target) -> None:
    rows = [("", "A", "B"), ("model", model_a, model_b)]
    if result.a is not None:
        rows.append((f"{result.a.name} (95% CI)", f"{result.a.shown} {result.a.interval}",
                     f"{result.b.shown} {result.b.interval}"))
    if latencies:
        rows.append((f"predicted latency on {target.name}", *(f"{c.latency_s * 1e3:.4f} ms" for c in latencies)))
        if all(c.simulated_s is not None for c in latencies):
            rows.append((f"simulated latency on {target.name}",
                         *(f"{c.simulated_s * 1e3:.4f} ms" for c in latencies)))
    rows += [("MACs", *(_human_count(c.macs) for c in costs)),
             ("parameters", *(f"{c.params:,} ({_human_bytes(c.param_bytes)})" for c in costs)),
             ("peak activations", *(_human_bytes(c.peak_activation_bytes) for c in costs))]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    click.echo(f"data: {dataset}")
    for label, left, right in rows:
        click.echo(f"  {label:<{widths[0]}}  {left:<{widths[1]}}  {right}".rstrip())
    if latencies and latencies[1].latency_s < latencies[0].latency_s:
        grown = [f"{what} {y / x:.2f}x" for what, x, y in (("parameters", costs[0].param_bytes, costs[1].param_bytes),
                                                           ("MACs", costs[0].macs, costs[1].macs)) if x and y > x]
        if grown:
            click.echo(f"  B is faster but larger: {', '.join(grown)}, for "
                       f"{latencies[0].latency_s / latencies[1].latency_s:.2f}x the predicted speed")
    click.echo(f"B against A (n={result.n}):")
    for figure in result.fidelity.values():
        click.echo(f"  {figure}")


if __name__ == "__main__":  # pragma: no cover
    main()
