"""`onnx-tailor evaluate` and `onnx-tailor compare` as a user meets them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_tailor.cli import main
from tests.conftest import DIGITS

from .conftest import DIGITS_EVAL


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def noisy_path(tmp_path_factory, noisy_digits):
    path = tmp_path_factory.mktemp("models") / "noisy.onnx"
    onnx.save(noisy_digits.proto, str(path))
    return path


@pytest.fixture(scope="module")
def small_eval(tmp_path_factory):
    """The first 60 evaluation samples: enough to exercise the commands, quick to run."""
    path = tmp_path_factory.mktemp("data") / "small.npz"
    with np.load(DIGITS_EVAL) as archive:
        np.savez(path, input=archive["input"][:60], labels=archive["labels"][:60])
    return path


def test_evaluate_prints_top1_with_its_interval_and_n():
    result = invoke("evaluate", DIGITS.path, "--data", DIGITS_EVAL, "--metric", "top1")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{DIGITS.path} on {DIGITS_EVAL} (360 samples, labels 0-9)",
                                          "  top1 99.17% (95% CI [97.58, 99.72], Wilson, n=360)"]


def test_evaluate_with_a_reference_adds_agreement(noisy_path, small_eval):
    result = invoke("evaluate", noisy_path, "--data", small_eval, "--reference", DIGITS.path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].endswith(f", against {DIGITS.path}")
    assert lines[1].startswith("  top1 ") and lines[2].startswith("  agreement ") and "n=60" in lines[2]


def test_evaluate_json_and_the_budget_warning(small_eval):
    result = invoke("evaluate", DIGITS.path, "--data", small_eval, "--json", "--ci-width", "1")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    top1 = report["scores"]["top1"]
    assert report["n"] == 60 and top1["ci_method"] == "Wilson" and top1["ci_low"] < top1["value"] <= top1["ci_high"]
    assert len(report["warnings"]) == 1 and "wider than the budget of 1 point" in report["warnings"][0]


def test_evaluate_random_data_against_a_reference(noisy_path):
    result = invoke("evaluate", noisy_path, "--data", "random", "--samples", "16", "--metric", "sqnr",
                    "--reference", DIGITS.path)
    assert result.exit_code == 0, result.output
    assert "random (seed 0) (16 samples, no labels)" in result.stdout and " dB (95% CI [" in result.stdout


def test_evaluate_with_a_plugin_metric(tmp_path, monkeypatch, small_eval):
    (tmp_path / "tailor_cli_metric.py").write_text(
        "def margin(outputs, dataset, reference):\n"
        "    import numpy as np\n"
        "    top2 = np.sort(outputs['logits'], axis=1)[:, -2:]\n"
        "    return top2[:, 1] - top2[:, 0]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        result = invoke("evaluate", DIGITS.path, "--data", small_eval, "--metric", "tailor_cli_metric:margin")
    finally:
        sys.modules.pop("tailor_cli_metric", None)
    assert result.exit_code == 0, result.output
    assert "tailor_cli_metric:margin " in result.stdout and "bootstrap (1000 resamples), n=60" in result.stdout


def test_compare_prints_both_models_side_by_side(noisy_path, small_eval):
    result = invoke("compare", DIGITS.path, noisy_path, "--data", small_eval)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for row in ("top1 (95% CI)", "MACs", "parameters", "peak activations", "B against A (n=60):",
                "  agreement ", "  cosine ", "  sqnr "):
        assert row in out, row
    macs_row = next(line for line in out.splitlines() if line.strip().startswith("MACs"))
    assert macs_row.split()[1:] == ["7.85", "M", "7.85", "M"]  # noise changes weights, not the cost


def test_compare_json(noisy_path, small_eval):
    result = invoke("compare", DIGITS.path, noisy_path, "--data", small_eval, "--json")
    report = json.loads(result.stdout)
    assert report["a"]["metric"]["name"] == "top1" and report["a"]["macs"] == report["b"]["macs"] > 0
    assert set(report["b_vs_a"]) == {"agreement", "cosine", "sqnr"}
    assert report["b_vs_a"]["cosine"]["value"] < 1


@pytest.mark.parametrize("data, message", [
    ("missing.npz", "missing.npz: no such file or folder"),
    ("wrong_name", "no array for model input 'input' and array 'x' is no model input"),
    ("random", "random (seed 0) has no labels and there is no reference model"),
])
def test_bad_data_is_one_line_and_exit_1(data, message, tmp_path):
    if data == "wrong_name":
        data = tmp_path / "wrong.npz"
        np.savez(data, x=np.zeros((2, 1, 32, 32), np.float32))
    result = invoke("evaluate", DIGITS.path, "--data", data)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_bad_data_in_a_real_process(tmp_path):
    bad = tmp_path / "nan.npz"
    np.savez(bad, input=np.full((3, 1, 32, 32), np.nan, np.float32))
    proc = subprocess.run([sys.executable, "-m", "onnx_tailor", "compare", str(DIGITS.path), str(DIGITS.path),
                           "--data", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {bad}: input 'input' has NaN or infinite values in 3 of 3 samples "
                                   f"(the first is sample 0)")
