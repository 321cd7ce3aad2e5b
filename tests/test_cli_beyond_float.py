"""The command line on quantized and control-flow models: their costs, and warnings on one line each."""

from __future__ import annotations

import json

import onnx
from click.testing import CliRunner

from onnx_tailor.cli import main
from tests.graphs_beyond_float import loop_model


def test_inspect_and_simulate_warn_about_a_run_time_trip_count(tmp_path):
    path = tmp_path / "loop.onnx"
    onnx.save(loop_model(trips=None), path)
    runner = CliRunner()
    warning = "warning: Loop loop: trip count not constant; costed as one iteration"
    result = runner.invoke(main, ["inspect", str(path)], catch_exceptions=False)
    assert result.exit_code == 0 and warning in result.stderr and "Traceback" not in result.output
    assert "MACs              147.46 k" in result.stdout  # one iteration of the body's 3x3 conv, 16 -> 16 at 8x8
    report = json.loads(runner.invoke(main, ["inspect", str(path), "--json"], catch_exceptions=False).stdout)
    assert report["macs"] == 8 * 8 * 16 * 16 * 9 and report["warnings"] == [warning.removeprefix("warning: ")]
    result = runner.invoke(main, ["simulate", str(path), "--per-op"], catch_exceptions=False)
    assert result.exit_code == 0 and warning in result.stderr
    assert "loop" in result.stdout and "Loop" in result.stdout


def test_simulate_shows_the_kernels_a_loop_is_costed_by(tmp_path):
    path = tmp_path / "loop.onnx"
    onnx.save(loop_model(trips=3), path)
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", str(path), "--per-op"], catch_exceptions=False)
    loop, body = [line.split() for line in result.stdout.splitlines()[1:3]]
    assert loop[:3] == ["loop", "Loop", "x3"] and body[:2] == ["body.conv", "Conv+Relu"]
    assert int(loop[3].replace(",", "")) == 3 * int(body[2].replace(",", ""))  # cycles: three runs of the body
    data = json.loads(runner.invoke(main, ["simulate", str(path), "--json", "--per-op"]).stdout)
    [kernel] = data["kernels"]
    assert kernel["repeats"] == 3 and [k["kernel"] for k in kernel["body"]] == ["body.conv", "body.cond"]  # + Identity
