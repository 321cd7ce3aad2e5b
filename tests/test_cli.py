"""The command line as a user meets it: output, files written, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
from click.testing import CliRunner

from onnx_tailor.cli import main
from tests.conftest import DIGITS
from tests.graphs import quantized_matmul, tiny_mobilenet


@pytest.fixture
def tiny_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_mobilenet(), str(path))
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_inspect_reports_costs_and_blocks():
    result = invoke("inspect", DIGITS.path)
    assert result.exit_code == 0, result.output
    for expected in ("MACs", "parameters", "peak activations", f"Inverted-bottleneck blocks: {DIGITS.ibn_blocks}"):
        assert expected in result.output


def test_inspect_json_is_machine_readable():
    result = invoke("inspect", DIGITS.path, "--json", "--target-multiple", "16")
    data = json.loads(result.output)
    assert data["macs"] > 0 and data["params"] > 0 and data["peak_activation_bytes"] > 0
    assert len(data["blocks"]) == DIGITS.ibn_blocks
    assert any(block["misaligned"] for block in data["blocks"])


def test_inspect_paddle_models_with_input_shape(paddle_models):
    result = invoke("inspect", paddle_models["paddle_det"], "--input-shape", "x=1,3,160,160")
    assert result.exit_code == 0, result.output
    assert "Inverted-bottleneck blocks: 15" in result.output


def test_inspect_lists_expand_depthwise_pairs(paddle_rec):
    result = invoke("inspect", paddle_rec, "--input-shape", "x=1,3,48,320")
    assert result.exit_code == 0, result.output
    listing = result.output.split("Expand-depthwise pairs: 12\n", 1)[1].splitlines()
    assert listing[0].split() == ["#", "expand", "depthwise", "in", "exp", "kernel", "stride", "input",
                                  "activation", "IBN", "block"]
    assert listing[1].split() == ["1", "Conv_2", "Conv_3", "16", "32", "3x3", "1x1", "24x160", "hardswish", "1"]
    data = json.loads(invoke("inspect", paddle_rec, "--input-shape", "x=1,3,48,320", "--json").output)
    assert [(p["expand"], p["depthwise"]) for p in data["pairs"]][:2] == [("Conv_2", "Conv_3"), ("Conv_4", "Conv_5")]
    assert len(data["pairs"]) == 12 and data["pairs"][0]["nodes"] == sorted(data["pairs"][0]["nodes"])


def test_passes_lists_every_pass_with_exactness():
    result = invoke("passes")
    for name in ("fold_batchnorm", "densify_depthwise", "pad_channels", "simplify"):
        assert name in result.output
    assert "exact" in result.output and "--param multiple=<int>" in result.output


def test_apply_without_a_site_writes_a_quantized_model_still_quantized(tmp_path):
    """'wrote it unchanged' means it: int8 weights are not written back as float32 ones."""
    source, out = tmp_path / "int8.onnx", tmp_path / "out.onnx"
    onnx.save(quantized_matmul("cast"), str(source))
    result = invoke("apply", source, "--pass", "pad_channels", "-o", out)
    assert result.exit_code == 0, result.output
    assert "wrote it unchanged" in result.output
    weights = {t.name: (t.data_type, t.raw_data) for t in onnx.load(str(out)).graph.initializer}
    assert weights == {t.name: (t.data_type, t.raw_data) for t in onnx.load(str(source)).graph.initializer}


def test_apply_all_sites_writes_a_verified_model(tiny_path, tmp_path):
    out = tmp_path / "padded.onnx"
    before = tiny_path.read_bytes()
    result = invoke("apply", tiny_path, "--pass", "pad_channels", "--param", "multiple=16", "-o", out)
    assert result.exit_code == 0, result.output
    assert "verified exact" in result.output and out.exists()
    onnx.checker.check_model(onnx.load(str(out)))
    assert tiny_path.read_bytes() == before


def test_apply_one_site_and_list_sites(tiny_path, tmp_path):
    listing = invoke("apply", tiny_path, "--pass", "densify_depthwise", "--list-sites")
    anchors = [line.split()[1] for line in listing.output.splitlines() if line.startswith("site")]
    assert len(anchors) == 3
    out = tmp_path / "one.onnx"
    result = invoke("apply", tiny_path, "--pass", "densify_depthwise", "--site", anchors[0], "-o", out)
    assert result.exit_code == 0 and "rewrote 1 site(s)" in result.output
    grouped = [n for n in onnx.load(str(out)).graph.node
               if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(grouped) == 2


def _bad_inputs(tmp_path, tiny_path):
    text = tmp_path / "text.onnx"
    text.write_text("not a model at all\n" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_path.read_bytes()[:500])
    out = tmp_path / "o.onnx"
    a_conv = next(n.name for n in onnx.load(str(tiny_path)).graph.node if n.op_type == "Conv")
    symbolic = onnx.load(str(tiny_path))  # height and width left to the user, as detectors export them
    for dim, name in zip(symbolic.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.dim_param = name
    onnx.save(symbolic, str(tmp_path / "symbolic.onnx"))
    return {
        "missing file": (["inspect", tmp_path / "nope.onnx"], "no such file"),
        "not onnx": (["inspect", text], "not an ONNX model"),
        "truncated": (["inspect", truncated], "not an ONNX model"),
        "unknown pass": (["apply", tiny_path, "--pass", "make_faster", "-o", out], "unknown pass 'make_faster'"),
        "unknown site": (["apply", tiny_path, "--pass", "pad_channels", "--site", "Conv_999", "-o", out],
                         "no node named 'Conv_999'"),
        "declined site": (["apply", tiny_path, "--pass", "fold_batchnorm", "--site", a_conv, "-o", out],
                          "is not a site of fold_batchnorm"),
        "bad param": (["apply", tiny_path, "--pass", "pad_channels", "--param", "width=3", "-o", out],
                      "unknown parameter 'width'"),
        "output is input": (["apply", tiny_path, "--pass", "pad_channels", "-o", tiny_path], "is the input model"),
        "unknown input name": (["inspect", tiny_path, "--input-shape", "wrong=1,2"], "no input called"),
        "symbolic shape": (["inspect", tmp_path / "symbolic.onnx"], "give a concrete shape, e.g. --input-shape"),
        "unknown target": (["simulate", tiny_path, "--target", "npu-p99"], "unknown target 'npu-p99'"),
        "bad measurements": (["costmodel", "fit", "--measurements", text, "--name", "x", "-o", out],
                             "needs a header"),
    }


@pytest.mark.parametrize("case", ["missing file", "not onnx", "truncated", "unknown pass", "unknown site",
                                  "declined site", "bad param", "output is input", "unknown input name", "symbolic shape",
                                  "unknown target", "bad measurements"])
def test_user_mistakes_get_one_line_and_exit_1(case, tmp_path, tiny_path):
    args, message = _bad_inputs(tmp_path, tiny_path)[case]
    # A real process, so that what the user would see (and the exit code) is what is tested.
    proc = subprocess.run([sys.executable, "-m", "onnx_tailor", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def test_usage_errors_exit_2(tiny_path):
    proc = subprocess.run([sys.executable, "-m", "onnx_tailor", "apply", str(tiny_path), "--pass", "pad_channels"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--output" in proc.stderr and "Traceback" not in proc.stderr


def test_simulate_prints_the_per_op_table_and_total():
    result = invoke("simulate", DIGITS.path, "--per-op", "--target", "npu-p16")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["kernel", "ops", "cycles", "compute"]
    assert "Conv+Clip" in result.output and "on npu-p16:" in lines[-1]
    data = json.loads(invoke("simulate", DIGITS.path, "--json", "--per-op").output)
    assert data["cycles"] == pytest.approx(sum(k["cycles"] for k in data["kernels"]), rel=1e-6)


def test_cost_prints_prediction_beside_simulation():
    result = invoke("cost", DIGITS.path, "--target", "npu-p32", "--per-op")
    assert result.exit_code == 0, result.output
    assert "predicted latency" in result.output and "simulated latency" in result.output
    data = json.loads(invoke("cost", DIGITS.path, "--target", "cpu-ort", "--json").output)
    assert data["latency_ms"] > 0 and data["simulated_ms"] is None and data["params"] > 0


def test_a_new_device_from_sweep_to_profile(tmp_path):
    """The documented three steps: sweep, measure (here: simulated), fit; then use the profile."""
    sweep = tmp_path / "sweep"
    assert invoke("costmodel", "sweep", "--size", "40", "-o", sweep).exit_code == 0
    assert (sweep / "manifest.json").exists() and len(list(sweep.glob("*.onnx"))) > 40
    measured = tmp_path / "m.csv"
    result = invoke("costmodel", "measure", "--target", "npu-p16", "--sweep", sweep, "-o", measured)
    assert result.exit_code == 0, result.output
    profile = tmp_path / "mydev.json"
    result = invoke("costmodel", "fit", "--target", "npu-p16", "--measurements", measured, "--name", "mydev",
                    "-o", profile)
    assert result.exit_code == 0, result.output
    data = json.loads(invoke("cost", DIGITS.path, "--target", profile, "--json").output)
    assert data["target"] == "mydev" and data["latency_ms"] > 0
