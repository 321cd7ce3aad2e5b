"""The command line on models with the shapes real exports have: a fixed batch, a batch off axis 0, scalar and
integer inputs, dimensions only --input-shape or real data can fix. Each either works or says why in one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_tailor import zoo
from onnx_tailor.ir import Model, run
from tests.odd_shapes import fixed_batch_convnet, length_branch, recurrent_step, two_embeddings


def _cli(*args) -> subprocess.CompletedProcess:
    # A real process, so that what the user would see (and the exit code) is what is tested.
    return subprocess.run([sys.executable, "-m", "onnx_tailor", *map(str, args)], capture_output=True, text=True)


def _one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def saved(tmp_path):
    def save(proto: onnx.ModelProto, name: str):
        path = tmp_path / f"{name}.onnx"
        onnx.save(proto, str(path))
        return path
    return save


@pytest.mark.parametrize("args", [
    ["apply", "--pass", "align_channels", "--param", "multiple=16"],
    ["apply", "--pass", "factor_low_rank", "--param", "method=whitened", "--param", "rank=2"],
])
def test_lossy_passes_calibrate_a_fixed_batch_model(args, saved, tmp_path):
    path = saved(fixed_batch_convnet(), "fixed")
    out = tmp_path / "out.onnx"
    proc = _cli(args[0], path, *args[1:], "--data", "random", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "rewrote 1 site(s)" in proc.stderr
    rewritten = Model(onnx.load(str(out)))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert next(iter(run(rewritten, {"x": x}).values())).shape == (1, 8)


def test_optimize_and_evaluate_run_a_fixed_batch_model_on_64_samples(saved, tmp_path):
    path = saved(fixed_batch_convnet(), "fixed")
    proc = _cli("evaluate", path, "--data", "random", "--reference", path, "--metric", "cosine")
    assert proc.returncode == 0 and "n=64" in proc.stdout, proc.stderr
    out = tmp_path / "opt.onnx"
    proc = _cli("optimize", path, "--data", "random", "--passes", "align_channels", "--precision", "fp32",
                "--metric", "cosine", "--max-drop", "50%", "--quiet", "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()


def test_random_data_for_a_recurrent_step_keeps_the_state_batch_and_the_scalar_rate(saved):
    path = saved(recurrent_step(), "step")
    proc = _cli("evaluate", path, "--data", "random", "--samples", "7", "--reference", path, "--metric", "cosine")
    assert proc.returncode == 0, proc.stderr
    assert "cosine 1.0000" in proc.stdout and "n=7" in proc.stdout


def test_a_rate_that_differs_between_samples_is_refused(saved, tmp_path):
    path = saved(recurrent_step(), "step")
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((4, 5, 6)).astype(np.float32), state=np.zeros((4, 2, 4), np.float32),
             sr=np.array([8000, 16000, 16000, 16000]))
    _one_line_error(_cli("evaluate", path, "--data", data, "--reference", path), "'sr' has no batch axis")


def test_random_token_ids_stay_inside_a_two_row_table(saved):
    path = saved(two_embeddings(), "bert_input")
    proc = _cli("evaluate", path, "--data", "random", "--reference", path, "--metric", "cosine")
    assert proc.returncode == 0, proc.stderr


def test_one_error_lists_every_input_that_needs_a_shape(saved):
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "length"]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3, "width"])]
    nodes = [helper.make_node("ReduceSum", ["a"], ["ra"], keepdims=0),
             helper.make_node("ReduceSum", ["b"], ["rb"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("ra", TensorProto.FLOAT, []),
                                                   helper.make_tensor_value_info("rb", TensorProto.FLOAT, [])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    line = _one_line_error(_cli("inspect", saved(proto, "two")), "'a' [?,?]", "'b' [?,3,?]",
                           "--input-shape a=1,N --input-shape b=1,3,N")
    assert line.count("--input-shape") == 2


@pytest.mark.parametrize("shape, shown", [("x=4,3,8,8", "x=4,3,8,8"), ("x=1,3,8", "x=1,3,8"), ("x=1,3,8,9", "x=1,3,8,9")])
def test_a_shape_that_contradicts_a_fixed_dimension_is_refused(shape, shown, saved):
    path = saved(fixed_batch_convnet(), "fixed")
    _one_line_error(_cli("inspect", path, "--input-shape", shape), f"--input-shape {shown} contradicts the model",
                    "[1,3,8,8]")


def test_shapes_known_only_from_real_values_ask_for_data(saved, tmp_path):
    path = saved(length_branch(), "branch")
    _one_line_error(_cli("inspect", path, "--input-shape", "x=1,6"), "'x' [1, 6]", "--data")
    data = tmp_path / "four.npz"
    np.savez(data, x=np.ones((3, 4), np.float32))
    proc = _cli("inspect", path, "--data", data)  # the data's length fits, and gives the input shape
    assert proc.returncode == 0, proc.stderr
    assert "inputs x[1,4]" in proc.stdout


@pytest.fixture(scope="module")
def silero_path():
    found = zoo.fetch("silero_vad")
    if isinstance(found, str):
        pytest.skip(found)
    return found["silero_vad"]


def test_silero_vad_asks_for_data_and_runs_with_it(silero_path, tmp_path):
    _one_line_error(_cli("inspect", silero_path), "'input' [?,?]", "--input-shape input=1,N")
    # Random sample rates take the branch a 512-sample frame does not fit: the error names 'sr'.
    _one_line_error(_cli("inspect", silero_path, "--input-shape", "input=1,512"), "'sr' []", "--data")
    rng = np.random.default_rng(0)
    data = tmp_path / "speech.npz"
    np.savez(data, input=rng.standard_normal((12, 512)).astype(np.float32) * 0.1,
             state=np.zeros((12, 2, 128), np.float32), sr=np.full(12, 16000, np.int64))
    proc = _cli("inspect", silero_path, "--data", data)
    assert proc.returncode == 0 and "input[1,512], state[2,1,128], sr[]" in proc.stdout, proc.stderr
    proc = _cli("evaluate", silero_path, "--data", data, "--reference", silero_path, "--metric", "cosine",
                "--batch-size", "5")
    assert proc.returncode == 0 and "cosine 1.0000" in proc.stdout, proc.stderr
