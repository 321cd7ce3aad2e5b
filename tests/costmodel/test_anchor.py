"""Re-anchoring a measured target's cost model to the host's speed now (`costmodel.anchor`)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from onnx_tailor.cli import main
from onnx_tailor.costmodel import TargetError, cost_model_for, load_target, read_measurements
from onnx_tailor.costmodel import anchor
from onnx_tailor.costmodel.anchor import ANCHOR_MAX_S, ANCHOR_MIN_S, Anchoring, anchor_ids, measure_anchors
from onnx_tailor.costmodel.measure import OVERHEAD_ID, machine_description
from onnx_tailor.costmodel.regressor import Measurements
from onnx_tailor.costmodel.sweep import base_entries
from onnx_tailor.passes.canonicalize import load
from tests.conftest import DIGITS

CPU = load_target("cpu-ort")
SHIPPED = read_measurements(CPU.measurements_path())


def test_anchors_are_chosen_by_id_spread_over_kinds_and_within_the_time_window():
    ids = anchor_ids(SHIPPED)
    times = dict(SHIPPED.rows)
    assert len(ids) == anchor.ANCHOR_COUNT == len(set(ids)) and OVERHEAD_ID not in ids
    assert all(ANCHOR_MIN_S <= times[i] <= ANCHOR_MAX_S for i in ids)
    assert {"conv", "depthwise", "eltwise", "matmul", "pool"} <= {i.partition(":")[0] for i in ids}
    shuffled = Measurements(list(reversed(SHIPPED.rows)))
    assert anchor_ids(shuffled) == ids  # the CSV's row order does not matter, only its ids


def test_every_op_keeps_an_anchor_when_rounding_up_the_small_ones_overshoots():
    rows = [(f"conv:x={i}", 1e-4) for i in range(100)] + [(f"{op}:x=1", 1e-4) for op in "abcdefg"]
    ids = anchor_ids(Measurements(rows), count=8)
    assert len(ids) == 8 and {i.partition(":")[0] for i in ids} == {"conv", *"abcdefg"}
    assert len(anchor_ids(Measurements(rows), count=3)) == 3  # fewer anchors than ops: the count holds


def test_factor_is_the_median_of_now_over_then_on_the_anchors_the_csv_holds():
    then = Measurements([("a:x=1", 1e-5), ("a:x=2", 2e-5), ("a:x=3", 4e-5), (OVERHEAD_ID, 5e-6)])
    anchoring = Anchoring({"a:x=1": 1.1e-5, "a:x=2": 3e-5, "a:x=3": 4.8e-5, "a:x=9": 1.0}, 6e-6)
    assert anchoring.factor_for(then) == pytest.approx(1.2)  # ratios 1.1, 1.5, 1.2; a:x=9 is not in the CSV
    assert Anchoring({"b:x=1": 1e-5}, 6e-6).factor_for(then) is None
    merged = Anchoring.merged([anchoring, Anchoring({"a:x=1": 1.3e-5}, 4e-6)])
    assert merged.now_s["a:x=1"] == pytest.approx(1.2e-5) and merged.overhead_s == pytest.approx(5e-6)
    assert Anchoring.from_dict(json.loads(json.dumps(anchoring.to_dict()))) == anchoring


def test_a_rescaled_cost_model_scales_every_kernel_and_takes_the_new_overhead():
    model = load(DIGITS.path)
    raw = cost_model_for(CPU)
    scaled = raw.rescaled(1.25, 7e-6)
    before, after = raw.predict(model), scaled.predict(model)
    assert after.overhead_s == 7e-6 and before.overhead_s == SHIPPED.overhead_s  # the original is unchanged
    assert [k.latency_s for k in after.kernels] == pytest.approx([1.25 * k.latency_s for k in before.kernels])
    assert after.latency_s == pytest.approx(7e-6 + 1.25 * (before.latency_s - before.overhead_s))
    assert scaled.rescaled(0.8).scale == pytest.approx(raw.scale)  # raw.scale: the network factor (netfactor)
    with pytest.raises(ValueError):
        raw.rescaled(0.0)
    with pytest.raises(TargetError, match="none of the"):
        Anchoring({"conv:nothing=1": 1e-5}, 5e-6).rescale(raw, SHIPPED)


def test_anchors_are_re_timed_with_the_sweeps_method():
    entries = [e for e in base_entries(size=40) if e.op in ("eltwise", "pool") and e.p["ctx"] == 1][:3]
    then = Measurements([(e.id, 2e-5) for e in entries])
    anchoring = measure_anchors(CPU, then, count=3)
    assert set(anchoring.now_s) == {e.id for e in entries}
    assert all(t > 0 for t in anchoring.now_s.values()) and anchoring.overhead_s > 0
    assert anchoring.factor_for(then) > 0
    with pytest.raises(TargetError, match="simulated"):
        measure_anchors(load_target("npu-p32"), then)


def test_cost_anchor_scales_the_prediction_on_measured_targets_and_refuses_simulated_ones(monkeypatch):
    monkeypatch.setattr(anchor, "ANCHOR_COUNT", 6)  # a quick re-timing: the arithmetic is what is tested
    runner = CliRunner()
    raw = json.loads(runner.invoke(main, ["cost", str(DIGITS.path), "--target", "cpu-ort", "--json"]).output)
    result = runner.invoke(main, ["cost", str(DIGITS.path), "--target", "cpu-ort", "--json", "--anchor"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["anchor"]["kernels"] == 6 and data["anchor"]["factor"] > 0
    kernels_ms = raw["latency_ms"] - SHIPPED.overhead_s * 1e3
    assert data["latency_ms"] == pytest.approx(data["anchor"]["overhead_ms"] + data["anchor"]["factor"] * kernels_ms)
    refused = runner.invoke(main, ["cost", str(DIGITS.path), "--target", "npu-p32", "--anchor"])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1 and "simulated" in refused.output


def _cpu_target_measured_on(tmp_path, machine: str):
    """cpu-ort with the shipped kernel times, filed as measured on `machine`."""
    lines = [f"# machine: {machine}" if line.startswith("# machine:") else line
             for line in CPU.measurements_path().read_text().splitlines()]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    profile = json.loads((CPU.source).read_text())
    (tmp_path / "mine.json").write_text(json.dumps({**profile, "name": "mine", "measurements": "m.csv"}))
    return load_target(str(tmp_path / "mine.json"))


def test_cost_notes_measurements_taken_on_another_machine(tmp_path):
    here = _cpu_target_measured_on(tmp_path, machine_description(CPU))
    assert anchor.measured_elsewhere(here) is None and anchor.measured_elsewhere(load_target("npu-p32")) is None
    elsewhere = _cpu_target_measured_on(tmp_path, "Some Other CPU; 64 cores")
    assert anchor.measured_elsewhere(elsewhere) == "Some Other CPU; 64 cores"
    runner = CliRunner()
    text = runner.invoke(main, ["cost", str(DIGITS.path), "--target", str(tmp_path / "mine.json")])
    assert text.exit_code == 0 and "measured on another machine (Some Other CPU; 64 cores)" in text.stderr
    data = json.loads(runner.invoke(main, ["cost", str(DIGITS.path), "--target", str(tmp_path / "mine.json"),
                                           "--json"]).stdout)
    assert data["measured_on_another_machine"] == "Some Other CPU; 64 cores"
