"""The fit memo: a fit asked for again is served from it, with the very bytes a fresh fit makes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from onnx_tailor.analysis import find_ibn_blocks
from onnx_tailor.passes import apply_pass
from onnx_tailor.passes.canonicalize import load
from onnx_tailor.passes.fit_memo import DIRECTORY_PREFIX, FitMemo, fit_key, shared_directory, using
from tests.conftest import DIGITS

REFINE = {"init": "lsq", "refine": 5}  # a few steps: the memo keeps whatever the fit made


def _fused(model, block_index: int, calib):
    return apply_pass(model, "fuse_ibn_expansion", find_ibn_blocks(model)[block_index].expand, REFINE, calib=calib)


def test_a_block_upstream_of_a_step_is_served_with_the_bytes_of_a_fresh_fit(digits_split):
    model, calib = load(DIGITS.path), digits_split.calibration.inputs
    memo = FitMemo()
    with using(memo):
        _fused(model, 1, calib)  # block 1 on the parent: a miss, now kept
        child = _fused(model, 5, calib).model  # a step downstream of block 1
        assert (memo.stats.hits, memo.stats.misses) == (0, 2)
        served = _fused(child, 1, calib)
        assert memo.stats.hits == 1
    fresh = _fused(child, 1, calib)  # no memo active: fitted again
    assert served.model.serialized == fresh.model.serialized
    assert served.local_errors == fresh.local_errors


def test_a_block_downstream_of_a_step_is_fitted_again(digits_split):
    model, calib = load(DIGITS.path), digits_split.calibration.inputs
    memo = FitMemo()
    with using(memo):
        on_parent = _fused(model, 5, calib).model
        child = _fused(model, 1, calib).model  # changes what block 5 reads
        on_child = _fused(child, 5, calib).model
        assert memo.stats.hits == 0
    assert on_child.serialized == _fused(child, 5, calib).model.serialized
    assert on_parent.serialized != on_child.serialized


def test_processes_share_fits_through_the_directory(tmp_path):
    weights = {"w1": np.arange(6, dtype=np.float32).reshape(2, 3), "b1": np.ones(2, np.float32)}
    FitMemo(tmp_path).put("key", weights)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]  # written whole, no partial file left
    other = FitMemo(tmp_path)  # another process's memo: nothing in its memory
    found = other.get("key")
    assert found.keys() == weights.keys() and all(np.array_equal(found[k], weights[k]) for k in weights)
    assert found["w1"].dtype == np.float32 and not found["w1"].flags.writeable
    assert other.get("another") is None and (other.stats.hits, other.stats.misses) == (1, 1)


def test_a_memo_without_its_directory_keeps_fits_in_memory(tmp_path):
    memo = FitMemo(tmp_path / "gone")  # a Ray node without the search's directory
    memo.put("key", {"w": np.zeros(3)})
    assert memo.get("key")["w"].shape == (3,)
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("upstream", [True, False])
def test_the_key_names_the_cone_the_fit_reads(digits_split, upstream):
    model, calib = load(DIGITS.path), digits_split.calibration.inputs
    blocks = find_ibn_blocks(model)
    output = model.node(blocks[3].project).output[0]
    changed = _fused(model, 1 if upstream else 6, calib).model
    key = fit_key(model, [output], None, [], calib, "step")
    assert (fit_key(changed, [output], None, [], calib, "step") != key) is upstream
    assert fit_key(model, [output], None, [], calib, "another step") != key


def test_a_directory_left_by_a_killed_search_is_removed_and_a_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{DIRECTORY_PREFIX}{gone.stdout.strip()}-abc"  # its process has exited
    live = tmp_path / f"{DIRECTORY_PREFIX}{os.getpid()}-def"
    for directory in (stale, live):
        directory.mkdir()
        (directory / "fit.npz").write_bytes(b"x")
    made = Path(shared_directory())
    assert not stale.exists() and live.is_dir()
    assert made.parent == tmp_path and made.name.startswith(f"{DIRECTORY_PREFIX}{os.getpid()}-")
