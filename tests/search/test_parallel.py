"""Candidates applied and evaluated in parallel: a local process pool and Ray give the bytes one process gives.

Each strategy runs on the tiny synthetic MobileNet with one worker and with
two (and on a local Ray instance when Ray is installed); the recipe, the
model and the log of every candidate's fate must be the same.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from onnx_tailor.cli import main
from onnx_tailor.errors import TailorError
from onnx_tailor.ir import Model, save
from onnx_tailor.passes.canonicalize import canonicalize
from onnx_tailor.search import optimize
from tests.graphs import tiny_mobilenet

OPTIONS = dict(target="npu-p32", data="random", metric="cosine", max_drop="0.05",
               passes=["fuse_ibn_expansion", "densify_depthwise", "pad_channels"])


@pytest.fixture(scope="module")
def tiny() -> Model:
    return Model(canonicalize(tiny_mobilenet()))


def _fingerprint(result) -> tuple:
    recipe = json.dumps(result.recipe.to_dict(), sort_keys=True).encode()
    log = json.dumps(result.context.log, sort_keys=True, default=str).encode()
    return (hashlib.sha256(recipe).hexdigest(), result.model.content_hash, hashlib.sha256(log).hexdigest(),
            result.context.stats.applied, result.context.stats.evaluated)


@pytest.fixture(scope="module")
def serial(tiny):
    return {search: optimize(tiny, search=search, seed=3, workers=1, **OPTIONS)
            for search in ("greedy", "beam", "evolutionary")}


@pytest.mark.parametrize("search", ["greedy", "beam", "evolutionary"])
def test_two_workers_give_the_bytes_one_gives(tiny, serial, search):
    parallel = optimize(tiny, search=search, seed=3, workers=2, **OPTIONS)
    assert serial[search].recipe.steps
    assert _fingerprint(parallel) == _fingerprint(serial[search])


def test_the_command_line_takes_workers_and_writes_the_same_model(tiny, serial, tmp_path):
    path = tmp_path / "tiny.onnx"
    save(tiny, path)
    written = {}
    for workers in ("1", "2"):
        output = tmp_path / f"out{workers}.onnx"
        result = CliRunner().invoke(main, ["optimize", str(path), "--target", "npu-p32", "--data", "random",
                                           "--metric", "cosine", "--max-drop", "0.05", "--passes",
                                           ",".join(OPTIONS["passes"]), "--search", "beam", "--seed", "3",
                                           "--workers", workers, "--quiet", "-o", str(output)])
        assert result.exit_code == 0, result.output
        written[workers] = output.read_bytes()
    assert written["1"] == written["2"]


def test_zero_workers_is_refused(tiny):
    with pytest.raises(TailorError, match="--workers must be at least 1"):
        optimize(tiny, workers=0, **OPTIONS)


def test_ray_gives_the_bytes_one_process_gives(tiny, serial):
    ray = pytest.importorskip("ray", reason="Ray is not installed (the optional 'ray' extra)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = optimize(tiny, search="beam", seed=3, ray="auto", **OPTIONS)
    finally:
        ray.shutdown()
    assert _fingerprint(on_ray) == _fingerprint(serial["beam"])
