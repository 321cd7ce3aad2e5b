"""A profile for a new device: measuring the sweep on a target, and fitting a profile that loads as a target."""

from __future__ import annotations

import dataclasses
import json

import pytest

from onnx_tailor import load
from onnx_tailor.costmodel import (FittedProfile, MeasurementsError, TargetError, fit_profile, load_target,
                                   measure_sweep, read_measurements, score)
from onnx_tailor.costmodel.measure import OVERHEAD_ID
from onnx_tailor.costmodel.regressor import Measurements, simulate_entries, write_measurements
from onnx_tailor.costmodel.sweep import SweepEntry, base_entries
from tests.conftest import DIGITS

P16 = load_target("npu-p16")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """The base sweep of size 40 'measured' on npu-p16, as `costmodel measure` writes it."""
    path = tmp_path_factory.mktemp("measured") / "p16.csv"
    write_measurements(path, measure_sweep(base_entries(size=40), P16))
    return path


def test_simulated_targets_are_measured_by_the_simulator():
    entries = base_entries(size=10)[:12]
    calls = []
    result = measure_sweep(entries, P16, lambda done, total: calls.append(done))
    assert result.rows == simulate_entries(entries, P16)
    assert calls == []  # simulating reports no progress
    assert result.comments["target"] == "npu-p16" and result.comments["entries"] == "12"
    assert result.comments["machine"] == "simulated npu-p16 (docs/npu-target.md)"
    assert int(result.comments["took_s"]) >= 0


def test_ort_targets_are_timed_with_progress():
    entries = [SweepEntry.make("eltwise", c=8, hw=7, kind="relu", ctx=0),
               SweepEntry.make("eltwise", c=8, hw=7, kind="relu", ctx=1),  # the same kernel, measured once
               SweepEntry.make("pool", c=8, hw=8, kind="gap", ctx=0)]
    calls = []
    result = measure_sweep(iter(entries), load_target("cpu-ort"), lambda done, total: calls.append((done, total)),
                           networks=[])  # the training networks: test_netfactor.py
    # every kernel is measured inside a network: filed under its in-context id
    assert [entry_id for entry_id, _ in result.rows] == [OVERHEAD_ID, entries[1].id, entries[2].in_context.id]
    assert all(latency > 0 for _, latency in result.rows)
    assert calls == [(1, 2), (2, 2)]
    assert result.comments["target"] == "cpu-ort" and "CPUExecutionProvider" in result.comments["machine"]


def test_imported_targets_cannot_be_measured_here():
    imported = dataclasses.replace(P16, name="mydev", kind="import")
    with pytest.raises(TargetError, match=r"^target mydev is imported: measure the sweep on its device and "
                                          r"`costmodel fit` it$"):
        measure_sweep(base_entries(size=10), imported)


def test_fit_writes_a_profile_that_loads_and_scores(measured, tmp_path):
    out = tmp_path / "profiles" / "mydev.json"
    out.parent.mkdir()
    fitted = fit_profile(P16, measured, "mydev", out)
    assert isinstance(fitted, FittedProfile) and fitted.path == out
    raw = json.loads(out.read_text())
    assert raw["name"] == "mydev" and raw["kind"] == "npu" and raw["measurements"] == "mydev.csv"
    assert raw["description"] == "mydev: fitted from p16.csv on the npu-p16 profile"
    assert "source" not in raw
    for key in ("parallelism", "vector_lanes", "clock_hz", "sram_bytes", "dram_bytes_per_cycle", "dispatch_cycles"):
        assert raw[key] == getattr(P16, key), key
    assert raw["fusable_activations"] == list(P16.fusable_activations)
    assert (out.parent / "mydev.csv").read_text() == measured.read_text()  # copied beside it, as it was
    assert fitted.target == load_target(out) and fitted.target.measurements_path() == out.parent / "mydev.csv"
    assert fitted.cost_model.trained_rows == len(read_measurements(measured).rows)
    assert "conv" in fitted.cost_model.regressors
    result = score(load(DIGITS.path), fitted.target)
    assert result.target == "mydev" and result.latency_s > 0


def test_the_kind_follows_the_base_target(measured, tmp_path):
    ort = json.loads(fit_profile(load_target("cpu-ort"), measured, "cpu2", tmp_path / "cpu2.json").path.read_text())
    assert ort["kind"] == "ort" and ort["execution_provider"] == "CPUExecutionProvider"
    device = dataclasses.replace(P16, name="board", kind="import", measurements="board.csv")
    imported = fit_profile(device, measured, "board2", tmp_path / "board2.json")
    raw = json.loads(imported.path.read_text())
    assert raw["kind"] == "import" and "execution_provider" not in raw and raw["measurements"] == "board2.csv"
    assert imported.target.kind == "import"


def test_measurements_that_cannot_train_write_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,latency\n")
    with pytest.raises(MeasurementsError, match="needs a header"):
        fit_profile(P16, bad, "mydev", tmp_path / "mydev.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]
