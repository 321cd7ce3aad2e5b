"""Nothing lost (issue 12, section 1): models past 2 GiB, weights files, all-or-none outputs, temporaries.

Each test builds the bad situation, runs the library or the command line on it, and checks the exit
code, the one-line message and exactly the files left behind.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnx_tailor.accuracy.quantize import quantize_qdq
from onnx_tailor.cli import main
from onnx_tailor.costmodel.profiler import profiled_run
from onnx_tailor.errors import OutputError
from onnx_tailor.ir import Model, check_equivalence, io, large, read_proto, save
from onnx_tailor.ir.cleanup import ort_basic_cleanup
from onnx_tailor.ir.temporaries import scratch_folder
from onnx_tailor.passes.canonicalize import load
from tests.graphs import tiny_mobilenet

CLI = [sys.executable, "-m", "onnx_tailor"]


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


def matmul_model(k: int, n: int, weights: int = 4, conv_out: int = 20, seed: int = 0,
                 data_file: Path | None = None) -> onnx.ModelProto:
    """x[1, k] -> `weights` MatMuls by [k, n] -> summed -> [1, n, 1, 1] -> Conv 1x1 (conv_out) -> Conv 1x1 (8).

    The weights are rank 4 (so factor_low_rank has a clear site) and scaled so outputs stay near 1.
    With `data_file`, they are written there as external data instead of into the proto."""
    rng = np.random.default_rng(seed)
    inits, offset = [], 0
    handle = open(data_file, "wb") if data_file else None
    try:
        for i in range(weights):
            w = (rng.standard_normal((k, 4), dtype=np.float32) @ rng.standard_normal((4, n), dtype=np.float32))
            w /= np.float32(np.sqrt(k) * 2)
            if handle is None:
                inits.append(onnx.numpy_helper.from_array(w, f"W{i}"))
                continue
            handle.write(w.tobytes())
            inits.append(large.reference(TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=[k, n]),
                                         data_file.name, offset, w.nbytes))
            offset += w.nbytes
            del w
    finally:
        if handle:
            handle.close()
    inits += [onnx.numpy_helper.from_array(rng.standard_normal((conv_out, n, 1, 1)).astype(np.float32), "C1"),
              onnx.numpy_helper.from_array(rng.standard_normal((8, conv_out, 1, 1)).astype(np.float32), "C2"),
              onnx.numpy_helper.from_array(np.array([1, n, 1, 1], np.int64), "S")]
    nodes = [helper.make_node("MatMul", ["x", f"W{i}"], [f"y{i}"], name=f"mm{i}") for i in range(weights)]
    total = "y0"
    for i in range(1, weights):
        nodes.append(helper.make_node("Add", [total, f"y{i}"], [f"sum{i}"], name=f"add{i}"))
        total = f"sum{i}"
    nodes += [helper.make_node("Reshape", [total, "S"], ["r"], name="reshape"),
              helper.make_node("Conv", ["r", "C1"], ["c1"], name="conv1"),
              helper.make_node("Relu", ["c1"], ["a1"], name="relu"),
              helper.make_node("Conv", ["a1", "C2"], ["z"], name="conv2")]
    graph = helper.make_graph(nodes, "matmuls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def external_model(folder: Path, name: str, data_name: str, seed: int = 0) -> Path:
    """A small model saved with its weights in `data_name` beside it."""
    path = folder / name
    onnx.save_model(tiny_mobilenet(seed=seed), str(path), save_as_external_data=True, location=data_name,
                    size_threshold=0)
    return path


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def weights_files(path: Path) -> set[str]:
    return {e.value for t in onnx.load(str(path), load_external_data=False).graph.initializer
            for e in t.external_data if e.key == "location"}


@pytest.fixture
def external_always(monkeypatch):
    """Every saved model gets a weights file, as one past 1 GiB does."""
    monkeypatch.setattr(io, "_EXTERNAL_DATA_THRESHOLD", 0)


# -- models past 2 GiB: the light form, on small models --------------------------------------------------------


@pytest.fixture
def too_big(monkeypatch):
    """Treat every model as past protobuf's limit, so the 2 GiB code paths run on small models."""
    monkeypatch.setattr(large, "SERIALIZABLE", 0)


def test_a_model_past_the_limit_runs_infers_and_hashes_from_its_light_form(too_big, tmp_path):
    proto = matmul_model(256, 64)
    model = load_proto(proto, tmp_path)
    assert not model.fits
    with pytest.raises(Exception, match="2 GiB"):
        model.serialized
    light = large.lighten(model.proto)
    assert set(light.held) >= {"W0", "W1", "W2", "W3"}  # 64 KiB each: held aside
    assert all(not t.raw_data for t in light.proto.graph.initializer if t.name in light.held)
    assert model.tensor_info["r"].shape == (1, 64, 1, 1)  # shape inference on the light form
    small = Model(model.proto)
    large_hash = model.content_hash
    changed = onnx.ModelProto()
    changed.CopyFrom(model.proto)
    values = onnx.numpy_helper.to_array(changed.graph.initializer[0]).copy()
    values.flat[0] += 1
    changed.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(values, changed.graph.initializer[0].name))
    assert Model(changed).content_hash != large_hash  # a held weight's bytes are in the hash
    assert Model(model.proto).content_hash == large_hash
    assert check_equivalence(small, Model(changed)).equal is False  # onnxruntime ran on held weights
    assert check_equivalence(small, Model(model.proto)).equal


def load_proto(proto: onnx.ModelProto, folder: Path) -> Model:
    path = folder / "m.onnx"
    onnx.save(proto, str(path))
    return load(path)


def test_a_model_past_the_limit_saves_its_weights_aside_and_reloads_equal(too_big, tmp_path):
    model = load_proto(matmul_model(256, 64), tmp_path)
    out = tmp_path / "out" / "saved.onnx"
    out.parent.mkdir()
    save(model, out)
    assert listing(out.parent) == ["saved.onnx", "saved.onnx.data"]
    assert weights_files(out) == {"saved.onnx.data"}
    assert out.stat().st_size < 64 * 1024  # the graph holds no weights
    again = Model(read_proto(out))
    assert check_equivalence(model, again)


# -- weights files: never clobbered, committed after their data ------------------------------------------------


def test_save_never_overwrites_the_inputs_weights_file(external_always, tmp_path):
    """The input model's weights file is named `<out>.data`: saving to <out> must leave it alone."""
    source = external_model(tmp_path, "in.onnx", "out.onnx.data")
    weights_before = (tmp_path / "out.onnx.data").read_bytes()
    model = load(source)
    out = tmp_path / "out.onnx"
    save(model, out, input_path=source)
    assert (tmp_path / "out.onnx.data").read_bytes() == weights_before
    [fresh] = weights_files(out)
    assert fresh != "out.onnx.data" and fresh.startswith("out.onnx.") and fresh.endswith(".data")
    assert check_equivalence(load(source), Model(read_proto(out)))  # the input still loads, and so does out
    assert listing(tmp_path) == sorted(["in.onnx", "out.onnx", "out.onnx.data", fresh])


def test_cli_apply_keeps_the_inputs_weights_and_overwrite_input_keeps_a_loadable_input(external_always, tmp_path):
    source = external_model(tmp_path, "m.onnx", "m.onnx.data")
    weights_before = (tmp_path / "m.onnx.data").read_bytes()
    result = CliRunner().invoke(main, ["apply", str(source), "--pass", "pad_channels", "-o", str(source),
                                       "--overwrite-input"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx.data").read_bytes() == weights_before  # the old graph's weights, untouched
    [fresh] = weights_files(source)
    assert fresh != "m.onnx.data"
    read_proto(source)  # the new pair loads


def test_saving_again_replaces_the_previous_weights_file_it_made(external_always, tmp_path):
    model = load(external_model(tmp_path, "in.onnx", "in.onnx.data"))
    out = tmp_path / "out.onnx"
    save(model, out)
    save(model, out)
    [second] = weights_files(out)
    assert second != "out.onnx.data"  # the first save's file still existed while the second wrote
    assert listing(tmp_path) == sorted(["in.onnx", "in.onnx.data", "out.onnx", second])  # and is gone now
    save(model, out)
    assert listing(tmp_path) == sorted(["in.onnx", "in.onnx.data", "out.onnx", "out.onnx.data"])


@pytest.mark.parametrize("killed_at", [0, 1])
def test_a_kill_between_the_renames_leaves_the_old_pair(external_always, tmp_path, monkeypatch, killed_at):
    """Rename 0 puts the new weights in place, rename 1 the graph: dying at either leaves the old pair."""
    old = load(external_model(tmp_path, "a.onnx", "a.onnx.data", seed=1))
    new = load(external_model(tmp_path, "b.onnx", "b.onnx.data", seed=2))
    out = tmp_path / "out.onnx"
    save(old, out)
    before = listing(tmp_path)
    real_replace, calls = os.replace, []

    def dying_replace(source, target):
        calls.append(target)
        if len(calls) - 1 == killed_at:
            raise KeyboardInterrupt  # what a kill between the steps looks like from here
        return real_replace(source, target)

    monkeypatch.setattr(io.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save(new, out)
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert listing(tmp_path) == before  # no temporaries, no orphaned weights
    assert check_equivalence(old, Model(read_proto(out)))  # the old graph reads the old weights


def test_a_kill_after_the_graph_rename_leaves_the_new_pair(external_always, tmp_path, monkeypatch):
    old = load(external_model(tmp_path, "a.onnx", "a.onnx.data", seed=1))
    new = load(external_model(tmp_path, "b.onnx", "b.onnx.data", seed=2))
    out = tmp_path / "out.onnx"
    save(old, out)

    def die(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_fsync_folder", die)  # right after both renames
    with pytest.raises(KeyboardInterrupt):
        save(new, out)
    assert check_equivalence(new, Model(read_proto(out)))


# -- optimize: every output or none --------------------------------------------------------------------------


@pytest.fixture
def tiny_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_mobilenet(), str(path))
    return path


OPTIMIZE = ["--passes", "pad_channels", "--target", "npu-p32"]


def test_optimize_refuses_a_missing_report_folder_before_searching(tiny_path, tmp_path):
    out = tmp_path / "out.onnx"
    done = cli("optimize", tiny_path, *OPTIMIZE, "-o", out, "--report", tmp_path / "absent" / "r.json",
               "--recipe", tmp_path / "r.json")
    assert done.returncode == 1
    line = one_line_error(done.stderr)
    assert "absent" in line and "does not exist" in line
    assert "[optimize]" not in done.stderr  # no search started
    assert listing(tmp_path) == ["tiny.onnx"]


def test_apply_refuses_a_missing_output_folder_in_one_line(tiny_path, tmp_path):
    done = cli("apply", tiny_path, "--pass", "pad_channels", "-o", tmp_path / "absent" / "out.onnx")
    assert done.returncode == 1
    assert "absent" in one_line_error(done.stderr) and "verified" not in done.stderr  # refused before the work
    assert listing(tmp_path) == ["tiny.onnx"]


def test_optimize_refuses_two_outputs_with_one_name(tiny_path, tmp_path):
    done = cli("optimize", tiny_path, *OPTIMIZE, "-o", tmp_path / "out.onnx", "--report", tmp_path / "x.json",
               "--recipe", tmp_path / "x.json")
    assert done.returncode == 1 and "named for two outputs" in one_line_error(done.stderr)
    assert listing(tmp_path) == ["tiny.onnx"]


def test_optimize_writes_all_outputs_or_none_when_a_write_fails(tiny_path, tmp_path, monkeypatch):
    """A full disk while writing the recipe (the third file): no model, no report, no temporaries."""
    real_write, writes = Path.write_bytes, []

    def full_disk_on_third(self, data):
        writes.append(self)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk_on_third)
    out, report, recipe = tmp_path / "out.onnx", tmp_path / "report.json", tmp_path / "recipe.json"
    result = CliRunner().invoke(main, ["optimize", str(tiny_path), *OPTIMIZE, "--quiet", "-o", str(out),
                                       "--report", str(report), "--recipe", str(recipe)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "recipe.json: cannot write: No space left on device" in result.output
    assert listing(tmp_path) == ["tiny.onnx"]
    monkeypatch.setattr(Path, "write_bytes", real_write)
    result = CliRunner().invoke(main, ["optimize", str(tiny_path), *OPTIMIZE, "--quiet", "-o", str(out),
                                       "--report", str(report), "--recipe", str(recipe)])
    assert result.exit_code == 0, result.output
    assert listing(tmp_path) == ["out.onnx", "recipe.json", "report.json", "tiny.onnx"]
    assert json.loads(recipe.read_text())["steps"] is not None


# -- temporaries: unique, synced, and cleaned up after a kill ------------------------------------------------


def test_concurrent_text_writers_never_collide(tmp_path):
    """Two writers of the same file: with one fixed `<name>.part` one of them failed or wrote half."""
    target, errors = tmp_path / "report.json", []
    texts = ["a" * 200_000, "b" * 300_000]

    def writer(text):
        try:
            for _ in range(30):
                io.write_text_atomic(target, text)
        except Exception as exc:  # noqa: BLE001 - any failure is the bug
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_text() in texts
    assert listing(tmp_path) == ["report.json"]


def test_text_outputs_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(io.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                    real_fsync(fd)))
    io.write_text_atomic(tmp_path / "recipe.json", "{}\n")
    assert any(".onnx-tailor-" in name for name in synced)  # the temporary, before its rename


def test_a_write_leaves_the_outputs_mode_like_any_new_file(tmp_path):
    io.write_text_atomic(tmp_path / "r.json", "{}\n")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_temporaries_of_a_killed_run_are_removed_by_the_next_save(tmp_path, tiny_path):
    """A run killed mid-write leaves `.onnx-tailor-<pid>-*` (or, from older versions, a `.onnx-tailor-*`
    folder); the next save into that folder removes them, and leaves a live process's alone."""
    killed = tmp_path / f".onnx-tailor-{dead_pid()}-abcd1234.tmp"
    killed.write_bytes(b"half a model")
    legacy = tmp_path / ".onnx-tailor-x1y2z3w4"
    legacy.mkdir()
    (legacy / "model.onnx.data").write_bytes(b"weights")
    old = time.time() - 2 * 3600
    os.utime(legacy, (old, old))
    running = tmp_path / f".onnx-tailor-{os.getppid()}-efgh5678.tmp"
    running.write_bytes(b"being written")
    fresh_legacy = tmp_path / ".onnx-tailor-q1q2q3q4"
    fresh_legacy.mkdir()
    mine = tmp_path / ".onnx-tailor-notes.txt"  # not a name we make: never touched
    mine.write_text("keep")
    save(load(tiny_path), tmp_path / "out.onnx")
    assert listing(tmp_path) == sorted([".onnx-tailor-notes.txt", running.name, fresh_legacy.name, "out.onnx",
                                        "tiny.onnx"])


def test_a_killed_save_leaves_only_what_the_next_one_removes(tmp_path, tiny_path):
    """Kill a real process in the middle of saving: whatever it leaves, the next save cleans up."""
    script = (
        "import os, sys, signal\n"
        "from onnx_tailor.ir import io\n"
        "from onnx_tailor.passes.canonicalize import load\n"
        "real = io.os.replace\n"
        "io.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"io.save(load({str(tiny_path)!r}), {str(tmp_path / 'out.onnx')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.returncode == -9, done.stderr
    left = [name for name in listing(tmp_path) if name.startswith(".onnx-tailor-")]
    assert left  # the kill left its temporary behind
    save(load(tiny_path), tmp_path / "out.onnx")
    assert listing(tmp_path) == ["out.onnx", "tiny.onnx"]


def _clean_up(proto):
    ort_basic_cleanup(proto)


def _quantize(proto):
    quantize_qdq(Model(proto), {"input": np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)})


def _profile(proto):
    profiled_run(proto, ort.SessionOptions(), ["CPUExecutionProvider"],
                 {"input": np.zeros((1, 3, 16, 16), np.float32)}, runs=1)


@pytest.mark.parametrize("use", [_clean_up, _quantize, _profile], ids=["cleanup", "quantize", "profiler"])
def test_scratch_folders_of_a_dead_process_are_removed_by_the_next(tmp_path, monkeypatch, use):
    """onnxruntime's clean-up, the quantizer and the profiler hand onnxruntime files in a folder of the
    system temp dir: it carries the pid, and one a killed run left is removed when the next is made."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the system temp dir, for this test
    dead = tmp_path / f".onnx-tailor-{dead_pid()}-abcd1234.quantize"
    dead.mkdir()
    (dead / "model.onnx").write_bytes(b"left by a killed run")
    running = tmp_path / f".onnx-tailor-{os.getppid()}-efgh5678.profile"
    running.mkdir()
    seen = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **kw: seen.append(real_mkdtemp(*a, **kw)) or seen[-1])
    use(tiny_mobilenet())
    assert any(Path(s).name.startswith(f".onnx-tailor-{os.getpid()}-") for s in seen), seen
    assert listing(tmp_path) == [running.name]  # the dead one removed, the live one kept, its own gone


def test_the_quantizer_keeps_its_own_temporaries_inside_ours(tmp_path, monkeypatch):
    """onnxruntime's quantizer makes an `ort.quant.*` folder of its own (a copy of the model): it goes
    inside our scratch folder, which the next run removes if this one is killed."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp",
                        lambda *a, **kw: made.append(Path(real_mkdtemp(*a, **kw))) or str(made[-1]))
    _quantize(tiny_mobilenet())
    ours = [p for p in made if p.name.startswith(f".onnx-tailor-{os.getpid()}-") and p.name.endswith(".quantize")]
    theirs = [p for p in made if p.name.startswith("ort.quant.")]
    assert len(ours) == 1 and theirs, made
    assert all(p.parent == ours[0] for p in theirs), made
    assert tempfile.tempdir == str(tmp_path)  # put back


def test_a_killed_run_leaves_a_scratch_folder_the_next_removes(tmp_path, monkeypatch):
    script = (
        "import os, signal\n"
        "from onnx_tailor.ir.temporaries import scratch_folder\n"
        "with scratch_folder('cleanup') as folder:\n"
        "    (folder / 'basic.onnx').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path),
                               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.returncode == -9, done.stderr
    left = [name for name in listing(tmp_path) if name.startswith(".onnx-tailor-")]  # (python leaves others)
    assert len(left) == 1 and left[0].endswith(".cleanup"), left  # the kill left its folder behind
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with scratch_folder("profile") as made:
        assert made.is_dir()
    assert not [name for name in listing(tmp_path) if name.startswith(".onnx-tailor-")]


def test_an_unwritable_output_folder_is_one_line(tmp_path, tiny_path):
    with pytest.raises(OutputError, match="does not exist"):
        save(load(tiny_path), tmp_path / "absent" / "out.onnx")
    assert listing(tmp_path) == ["tiny.onnx"]


# -- a real model past 2 GiB, through the command line ---------------------------------------------------------

LARGE = pytest.mark.skipif(
    not os.environ.get("ONNX_TAILOR_LARGE"),
    reason="builds a 2.2 GB model and runs three commands on it (9 minutes and 12 GiB of memory at the peak on "
           "2 busy cores); set ONNX_TAILOR_LARGE=1 to run it")


@pytest.mark.large
@LARGE
def test_a_model_past_2_gib_inspects_applies_exactly_and_factors(tmp_path):
    """Four 554 MB MatMul weights in external data (2.2 GB, past protobuf's 2 GiB): inspect it, pad
    its small conv (exact: verified with onnxruntime on both 2 GiB models) and factor one weight."""
    k, n = (1 << 23) + (1 << 18), 16  # 554 MB each: thin, so that factoring is cheap; the bytes are what count
    source = tmp_path / "big.onnx"
    onnx.save(matmul_model(k, n, data_file=tmp_path / "big.onnx.data"), str(source))
    assert (tmp_path / "big.onnx.data").stat().st_size > 1 << 31
    before = (source.read_bytes(), (tmp_path / "big.onnx.data").stat().st_mtime_ns)

    done = cli("inspect", source, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["params"] == 4 * k * n + 20 * n + 8 * 20  # the weights; the Reshape target is no parameter

    padded = tmp_path / "padded.onnx"
    done = cli("apply", source, "--pass", "pad_channels", "--site", "conv1", "-o", padded)
    assert done.returncode == 0, done.stderr
    assert "verified exact" in done.stderr
    assert sorted(weights_files(padded)) == ["padded.onnx.data"]
    assert (tmp_path / "padded.onnx.data").stat().st_size > 1 << 31
    conv = {t.name: list(t.dims) for t in onnx.load(str(padded), load_external_data=False).graph.initializer}
    assert [32, n, 1, 1] in conv.values()  # conv1 padded from 20 to 32 filters

    factored = tmp_path / "factored.onnx"
    done = cli("apply", source, "--pass", "factor_low_rank", "--site", "mm0", "-o", factored)
    assert done.returncode == 0, done.stderr
    assert "rank 4" in done.stderr
    graph = onnx.load(str(factored), load_external_data=False).graph
    assert {"mm0/low_rank_u", "mm0/low_rank_v"} <= {node.name for node in graph.node}
    assert (source.read_bytes(), (tmp_path / "big.onnx.data").stat().st_mtime_ns) == before  # input untouched


def test_external_data_missing_or_outside_the_folder_is_one_line(tmp_path):
    """The checker is given the path, so it checks the weights files too (no ValidationError escapes)."""
    source = external_model(tmp_path, "m.onnx", "m.onnx.data")
    evil = onnx.load(str(source), load_external_data=False)
    for tensor in evil.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    onnx.save(evil, str(tmp_path / "evil.onnx"))
    (tmp_path / "m.onnx.data").rename(tmp_path / "moved.data")
    done = cli("inspect", source)
    assert done.returncode == 1 and "m.onnx.data" in one_line_error(done.stderr)
    done = cli("inspect", tmp_path / "evil.onnx")
    assert done.returncode == 1 and "points outside the directory" in one_line_error(done.stderr)
