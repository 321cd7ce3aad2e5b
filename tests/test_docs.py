"""The documentation as a user meets it: the README's and `--help`'s examples run as written, what they
write is git-ignored, the simulated NPU is documented in the repository with the parameters the
simulator uses, and `onnx-tailor targets` lists them.

The examples run in a scratch folder that holds `models/` as the repository does, so that every
command runs exactly as printed, from the repository root. One change is made: `optimize` gets
`--time-budget 1`, since its search takes minutes (bench/optimize_quality.py times it); what the
command writes and prints is still checked.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess

import click
import pytest
from click.testing import CliRunner

from onnx_tailor.cli import main
from onnx_tailor.costmodel import builtin_targets, load_target
from onnx_tailor.costmodel.kernels import FREE, MEMORY
from tests.conftest import MODELS, REPO

README = (REPO / "README.md").read_text()
NPU_DOC = REPO / "docs" / "npu-target.md"
OUTPUT_OPTIONS = ("-o", "--output", "--report", "--recipe", "--plot")
QUICK_SEARCH = ["--time-budget", "1"]


def fenced(text: str, language: str) -> list[str]:
    """The bodies of the ```language blocks of a Markdown text."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def readme_commands() -> list[str]:
    """Every `onnx-tailor` command in the README's ```sh blocks, in order; in `a && b && c` the
    `onnx-tailor` part (the test command on the first lines is this suite itself)."""
    commands = []
    for block in fenced(README, "sh"):
        for line in block.splitlines():
            command = line.split("&& ")[-1].strip()
            if command.startswith("onnx-tailor "):
                commands.append(command)
    return commands


def _all_commands(group: click.Group, ctx: click.Context):
    yield group, ctx
    for name, command in getattr(group, "commands", {}).items():
        sub = click.Context(command, info_name=name, parent=ctx)
        yield from _all_commands(command, sub) if isinstance(command, click.Group) else [(command, sub)]


def help_examples() -> list[str]:
    """The commands under "Examples:" or "Start with" in every command's --help, in order."""
    commands = []
    for command, ctx in _all_commands(main, click.Context(main, info_name="onnx-tailor")):
        in_examples = False
        for line in command.get_help(ctx).splitlines():
            stripped = line.strip()
            if stripped.endswith("Examples:") or stripped.startswith("Start with"):
                in_examples = True
            elif not stripped:
                in_examples = False
            elif in_examples and stripped.startswith("onnx-tailor "):
                commands.append(re.split(r"\s{2,}", stripped)[0])  # a description may follow after spaces
    return commands


def python_snippet() -> str:
    [snippet] = [b for b in fenced(README, "python") if "ot.optimize(" in b]
    return snippet


def _shape(line: str) -> str:
    """A printed line with its numbers (and the run-dependent padding around them) taken out."""
    return re.sub(r"\s+", " ", re.sub(r"-?\d[\d.,]*", "N", line)).strip()


def written_paths(command: str) -> list[str]:
    args = shlex.split(command)
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in OUTPUT_OPTIONS]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A scratch folder laid out as the repository root is, for the examples' relative paths."""
    (tmp_path / "models").symlink_to(MODELS, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_opens_with_the_main_job_and_the_tests():
    first = fenced(README, "sh")[0].splitlines()
    assert README.startswith("# onnx-tailor\n\n```sh\n")
    assert "pip install -e . &&" in first[0] and "onnx-tailor optimize models/digits_mbv2.onnx" in first[0]
    assert "--report report.json --recipe recipe.json" in first[0]
    assert 'pip install -e ".[test]"' in first[1] and first[1].endswith("python -m pytest -q")
    opening = README.split("```", 2)[2].split("\n\n")[1]  # the paragraph after the commands
    assert all(word in opening for word in ("faster", "report", "recipe")), opening
    sample = fenced(README, "text")[0]
    assert "target npu-p32" in sample and "Inverted-bottleneck blocks" in sample


def test_readme_and_help_examples_run_as_written(workdir):
    commands = readme_commands()
    commands += [c for c in help_examples() if c not in commands]
    assert len(commands) >= 15 and commands[0].startswith("onnx-tailor optimize")
    printed = {}
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] == "optimize":
            args += QUICK_SEARCH
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, f"{command}\n{result.output}"
        printed[command] = result.stdout
        for path in written_paths(command):
            assert (workdir / path).is_file(), f"{command} did not write {path}"
    # The README says so: the recipe replays to the bytes optimize wrote.
    assert (workdir / "digits.replayed.onnx").read_bytes() == (workdir / "digits.npu-p32.onnx").read_bytes()
    # The README's sample output is what the main job prints today, up to its numbers.
    shown = {_shape(line) for line in printed[commands[0]].splitlines()}
    sample = [line for line in fenced(README, "text")[0].splitlines() if line.strip() and line.strip() != "..."]
    headers = [l for l in sample if "Inverted-bottleneck blocks" in l or l.split()[:2] == ["block", "input"]]
    assert len(headers) == 2
    for line in (sample[0], sample[-1], *headers):  # a 1 s search takes no step
        assert _shape(line) in shown, f"the README's sample shows a line optimize no longer prints:\n{line}"


def test_readme_python_snippet_runs_as_written(workdir, capsys):
    snippet = python_snippet()
    assert "ot.optimize(" in snippet and "import onnx_tailor as ot" in snippet
    exec(compile(snippet, "README.md", "exec"), {})  # noqa: S102 - our own README, run as a user would
    printed = capsys.readouterr().out
    assert "MACs" in printed and "improved:" in printed
    assert (workdir / "digits.api.onnx").is_file() and (workdir / "digits.api.recipe.json").is_file()


def test_what_the_examples_write_is_git_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    written = [p for c in readme_commands() + help_examples() for p in written_paths(c)]
    written += re.findall(r'"(digits\.[\w.]+)"', python_snippet())
    assert "report.json" in written and "digits.api.onnx" in written
    for path in written:
        checked = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert checked.returncode == 0, f"{path}, written by an example, is not ignored by .gitignore"


def test_the_npu_is_documented_in_the_repository():
    assert NPU_DOC.is_file()
    assert "docs/npu-target.md" in README and "shared/design" not in README
    simulate_help = CliRunner().invoke(main, ["simulate", "--help"]).output
    assert "docs/npu-target.md" in simulate_help and "shared/design" not in simulate_help
    for name in builtin_targets():
        if load_target(name).simulated:
            assert "docs/npu-target.md" in load_target(name).description


def _doc_value(text: str) -> float:
    """'0.8 GHz', '512 KiB', '16 B/cycle', '500 cycles', '1 byte', '32' as a number in the profile's units."""
    number, _, unit = text.strip().partition(" ")
    scale = {"GHz": 1e9, "KiB": 1024, "MiB": 1024 ** 2}.get(unit, 1)
    return float(number) * scale


def test_the_npu_doc_gives_the_parameters_the_simulator_uses():
    """The machine table of docs/npu-target.md against the profiles in costmodel/targets/."""
    doc = NPU_DOC.read_text()
    rows = [line.split("|")[1:-1] for line in doc.splitlines() if re.match(r"\| .* \| `\w+` \|", line)]
    header = [cell.strip() for cell in next(line for line in doc.splitlines()
                                            if line.startswith("| parameter")).split("|")[1:-1]]
    names = [cell.split()[0] for cell in header[2:]]  # npu-p16, npu-p32 (default), npu-p64
    simulated = sorted(n for n in builtin_targets() if load_target(n).simulated)
    assert names == simulated
    checked = set()
    for row in rows:
        field = row[1].strip().strip("`")
        for name, cell in zip(names, row[2:]):
            actual = getattr(load_target(name), field)
            if field == "fusable_activations":
                listed = row[2] if cell.strip() == "same" else cell
                assert [a.strip() for a in listed.split(",")] == list(actual), (name, field)
            else:
                assert _doc_value(cell) == pytest.approx(actual), (name, field, cell)
            checked.add(field)
    assert checked >= {"parallelism", "vector_lanes", "clock_hz", "sram_bytes", "dram_bytes_per_cycle",
                       "dispatch_cycles", "element_bytes", "fusable_activations"}


def test_the_npu_doc_names_every_op_the_simulator_treats_specially():
    """Every memory-only and free op of costmodel/kernels.py is on the page, so none is costed silently."""
    doc = NPU_DOC.read_text()
    missing = sorted(op for op in MEMORY | FREE if op not in doc)
    assert not missing, f"docs/npu-target.md does not say how these ops are costed: {missing}"


def test_targets_lists_every_target_with_its_parameters():
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0, result.output
    blocks = {block.split()[0]: block for block in result.output.strip().split("\n\n")}
    assert sorted(blocks) == builtin_targets()
    for name, block in blocks.items():
        target = load_target(name)
        if target.simulated:
            assert re.search(rf"parallelism P +{target.parallelism}\n", block), block
        assert re.search(rf"dispatch +{target.dispatch_cycles} cycles per kernel\n", block), block
        for kind in target.grouped_activations:  # a field only some targets have is shown where set
            assert re.search(rf"grouped activations .*\b{kind}\b", block), block
    rows = json.loads(CliRunner().invoke(main, ["targets", "--json"]).output)
    assert [row["name"] for row in rows] == builtin_targets()
    for row in rows:
        target = load_target(row["name"])
        assert row == target.to_dict()
        assert row["parallelism"] == target.parallelism and row["precision"] == target.precision
        assert load_target(row["profile"]) == target  # the path it names is the profile itself
