"""The learned cost model: training data, determinism, accuracy against ground truth, bad input."""

from __future__ import annotations

import pytest

from onnx_tailor.costmodel import MeasurementsError, cost_model_for, load_target, read_measurements, score, simulate
from onnx_tailor.costmodel.measure import MIN_KERNEL_S
from onnx_tailor.costmodel.regressor import CostModel, Measurements, simulate_entries, training_matrix
from onnx_tailor.costmodel.sweep import SweepEntry, base_entries
from onnx_tailor.passes.canonicalize import load
from tests.conftest import DIGITS

P32 = load_target("npu-p32")


def test_sweep_ids_round_trip_and_build_valid_models():
    entries = base_entries(size=60)
    assert len({e.op for e in entries}) >= 8  # every kind of kernel is swept
    for entry in entries[::7]:
        assert SweepEntry.from_id(entry.id) == entry
        sim = simulate(entry.model(), P32)
        assert any(k.kernel.name == "op" for k in sim.kernels)
    channels = [e.p.get("co", e.p.get("c")) for e in entries if e.op in ("conv", "depthwise")]
    assert any(c % 8 for c in channels) and any(c % 8 == 0 for c in channels)  # aligned and not


def test_shipped_training_data_matches_the_simulator():
    """npu-p32.csv is what `costmodel measure --target npu-p32` writes: spot-check it."""
    measurements = read_measurements(P32.measurements_path())
    rows = dict(measurements.rows)
    sample = [SweepEntry.from_id(i) for i in list(rows)[:: max(len(rows) // 25, 1)]]
    for entry_id, latency in simulate_entries(sample, P32):
        assert latency == pytest.approx(rows[entry_id], rel=1e-5)


def test_prediction_is_close_to_ground_truth_on_a_held_out_model():
    model = load(DIGITS.path)
    predicted = cost_model_for(P32).predict(model).latency_s
    simulated = simulate(model, P32).latency_s
    assert abs(predicted / simulated - 1) < 0.10


def test_fitting_is_deterministic():
    model = load(DIGITS.path)
    data = Measurements(simulate_entries(base_entries(size=80), P32))
    first, second = CostModel.fit(P32, data).predict(model), CostModel.fit(P32, data).predict(model)
    assert first.latency_s == second.latency_s


def test_kinds_without_measurements_use_the_prior_and_say_so():
    data = Measurements([(e.id, t) for e, t in zip(base_entries(size=80), [1e-5] * 1000) if e.op == "conv"])
    prediction = CostModel.fit(P32, data).predict(load(DIGITS.path))
    assert "depthwise" in prediction.unlearned_kinds and prediction.latency_s > 0


def test_a_kernel_its_sweep_network_absorbed_is_not_training_data():
    """A residual Add that onnxruntime fused into the conv before it is filed at MIN_KERNEL_S: whether it is
    absorbed depends on neighbours the features do not see, so the row teaches nothing and is left out."""
    rows = [(e.id, 1e-5) for e in base_entries(size=80)]
    absorbed = next(index for index, (entry_id, _) in enumerate(rows) if entry_id.startswith("eltwise:"))
    with_floor = rows[:absorbed] + [(rows[absorbed][0], MIN_KERNEL_S)] + rows[absorbed + 1:]
    kinds, features, _ = training_matrix(P32, Measurements(with_floor))
    all_kinds, all_features, _ = training_matrix(P32, Measurements(rows))
    assert len(kinds) == len(all_kinds) - 1 and len(features) == len(all_features) - 1


def test_score_reports_memory_and_simulation():
    result = score(load(DIGITS.path), P32)
    assert result.simulated_s and result.latency_s and result.params > 0 and result.peak_activation_bytes > 0
    assert sum(k.predicted_s for k in result.kernels) == pytest.approx(result.latency_s)


@pytest.mark.parametrize("content,message", [
    ("", "needs a header"),
    ("id,latency\n", "needs a header"),
    ('id,latency_s\n"conv:ci=8",abc\n', "is not a number"),
    ('id,latency_s\n"conv:ci=8",-1\n', "must be a positive number"),
    ("id,latency_s\nresnet50,0.01\n", "is not a sweep id"),
    ("# only comments\nid,latency_s\n", "no measurements"),
])
def test_malformed_measurements_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(MeasurementsError, match=message):
        read_measurements(path)
