"""The code path of models past 2 GiB (`ir.large`), run on a 2 MiB model by lowering the limit in the test.

A model past protobuf's limit is handled through its light form everywhere it would be serialized (checks,
shape inference, onnxruntime sessions, hashes, saving). The real 2.2 GB model is an opt-in test
(tests/test_reliability_files.py, ONNX_TAILOR_LARGE=1); here `large.SERIALIZABLE` is lowered below this
model's size, so that every command takes that path, and what it writes must match, numerically, what
the ordinary path writes for the same command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnx_tailor.cli import main
from onnx_tailor.ir import large
from tests.test_reliability_files import matmul_model, weights_files

# Two MatMul weights of 1 MiB, each past HOLD_FROM_BYTES (held aside on the light path), wide enough for
# factor_low_rank to pay at the target's P = 32.
K, N, WEIGHTS = 4096, 64, 2


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(matmul_model(K, N, weights=WEIGHTS), str(path))
    return path


def force_light(monkeypatch) -> list:
    """From now on, treat every model as past 2 GiB; returns a list that grows with each light form made."""
    made, real = [], large.lighten

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(large, "SERIALIZABLE", 1 << 20)  # 1 MiB: the model's 2 MiB of weights are past it
    monkeypatch.setattr(large, "lighten", counting)
    return made


def run(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0 and result.exception is None, (result.output, result.exception)
    return result.stdout


def outputs(path: Path) -> np.ndarray:
    """The model's output on a seeded input, from onnxruntime given the path (external data included)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, K), dtype=np.float32)
    return session.run(None, {"x": x})[0]


def both_ways(tmp_path: Path, monkeypatch, *args) -> tuple[Path, Path]:
    """`args` + `-o OUT` on the ordinary path, then on the light one: the two outputs."""
    ordinary, light = tmp_path / "ordinary.onnx", tmp_path / "light.onnx"
    run(*args, "-o", ordinary)
    assert not weights_files(ordinary)  # it fits: one file
    made = force_light(monkeypatch)
    run(*args, "-o", light)
    assert made  # the light form was used...
    assert weights_files(light) == {"light.onnx.data"}  # ...and saving put the weights beside the graph
    return ordinary, light


def test_inspect_reports_the_same(source, monkeypatch):
    ordinary = json.loads(run("inspect", source, "--json"))
    made = force_light(monkeypatch)
    forced = json.loads(run("inspect", source, "--json"))
    assert made
    assert forced == ordinary
    assert ordinary["params"] == WEIGHTS * K * N + 20 * N + 8 * 20  # what the report says, counted here


def test_exact_apply_matches_the_ordinary_path(tmp_path, source, monkeypatch):
    ordinary, light = both_ways(tmp_path, monkeypatch, "apply", source, "--pass", "pad_channels", "--site", "conv1")
    dims = [list(t.dims) for t in onnx.load(str(light), load_external_data=False).graph.initializer]
    assert [32, N, 1, 1] in dims  # conv1 padded from 20 to 32 filters
    np.testing.assert_allclose(outputs(light), outputs(ordinary), rtol=0, atol=0)
    np.testing.assert_allclose(outputs(light), outputs(source), rtol=1e-5, atol=1e-5)  # exact


def test_factor_low_rank_matches_the_ordinary_path(tmp_path, source, monkeypatch):
    ordinary, light = both_ways(tmp_path, monkeypatch, "apply", source, "--pass", "factor_low_rank", "--site", "mm0")
    names = {node.name for node in onnx.load(str(light), load_external_data=False).graph.node}
    assert {"mm0/low_rank_u", "mm0/low_rank_v"} <= names
    np.testing.assert_allclose(outputs(light), outputs(ordinary), rtol=1e-6, atol=1e-6)


def test_a_short_optimize_matches_the_ordinary_path(tmp_path, source, monkeypatch):
    """The search (with data: factor_low_rank is lossy) chooses the same steps on both paths and writes
    models that compute the same. (Their recipes differ in the model's hash: past 2 GiB it is taken over the
    light form and the held tensors, `large.content_hash`, so a recipe replays on the model it came from.)"""
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((48, K), dtype=np.float32))
    # One process: the forced light path is a monkeypatch, which worker processes would not see.
    common = ["--data", data, "--metric", "cosine", "--passes", "factor_low_rank,pad_channels", "--target", "npu-p32",
              "--quiet", "--workers", "1"]
    ordinary, light = tmp_path / "ordinary.onnx", tmp_path / "light.onnx"
    run("optimize", source, *common, "--recipe", tmp_path / "ordinary.json", "-o", ordinary)
    made = force_light(monkeypatch)
    run("optimize", source, *common, "--recipe", tmp_path / "light.json", "-o", light)
    assert made and not weights_files(ordinary) and weights_files(light) == {"light.onnx.data"}
    steps = [json.loads((tmp_path / f"{name}.json").read_text())["steps"] for name in ("ordinary", "light")]
    assert "factor_low_rank" in {step["pass"] for step in steps[0]} and steps[1] == steps[0], steps
    np.testing.assert_allclose(outputs(light), outputs(ordinary), rtol=1e-6, atol=1e-6)
