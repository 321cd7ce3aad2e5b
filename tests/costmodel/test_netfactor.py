"""Training networks: their ids, the CSV rows that hold their whole-run times, and the factor fitting learns."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_tailor.cli import main
from onnx_tailor.costmodel import MeasurementsError, fit_profile, load_target, measure_sweep, read_measurements
from onnx_tailor.costmodel.anchor import anchor_ids
from onnx_tailor.costmodel.features import kernel_rows
from onnx_tailor.costmodel.measure import OVERHEAD_ID
from onnx_tailor.costmodel.netfactor import (TRAINING_DEPTHS, TRAINING_SIZES, build_network, is_network_id, network_id,
                                             network_model, parse_network_id, training_network_ids,
                                             write_training_networks)
from onnx_tailor.costmodel.regressor import (CostModel, Measurements, network_ratios, simulate_entries,
                                             training_matrix, write_measurements)
from onnx_tailor.costmodel.profile import measurements_from_profiles
from onnx_tailor.costmodel.profiler import ProfileError
from onnx_tailor.costmodel.sweep import SweepEntry, base_entries, write_sweep
from onnx_tailor.ir import run, seeded_inputs
from onnx_tailor.passes.canonicalize import load
from tests.conftest import DIGITS

P32 = load_target("npu-p32")
NETWORKS = training_network_ids(8)
OVERHEAD = 2e-5


@pytest.fixture(scope="module")
def kernels():
    """Kernel rows of a small sweep simulated on npu-p32, and the overhead row a measured CSV has."""
    return [(OVERHEAD_ID, OVERHEAD)] + simulate_entries(base_entries(size=80), P32)


def _kernel_sum(cost_model, entry_id):
    return sum(cost_model.predict_rows(kernel_rows(network_model(entry_id), cost_model.target)))


def _with_networks(kernels, factors):
    """The kernels plus each network timed at overhead + factor x the kernel sum a fit without them predicts."""
    plain = CostModel.fit(P32, Measurements(kernels))
    return Measurements(kernels + [(i, OVERHEAD + f * _kernel_sum(plain, i)) for i, f in zip(NETWORKS, factors)])


def test_network_ids_round_trip_and_spell_the_network():
    ids = training_network_ids()
    assert len(set(ids)) == len(ids) == 40
    # every input size at every depth
    assert ({(parse_network_id(i)["hw"], parse_network_id(i)["w"], parse_network_id(i)["depth"]) for i in ids}
            == {(h, w, d) for h, w in TRAINING_SIZES for d in TRAINING_DEPTHS})
    assert network_id(3, 48, 9, 320) == "network:depth=9,hw=48,seed=3,w=320"
    assert network_id(3, 64, 9, 64) == "network:depth=9,hw=64,seed=3"  # w only when it differs
    assert parse_network_id("network:depth=9,hw=48,seed=3,w=320") == {"depth": 9, "hw": 48, "seed": 3, "w": 320}
    assert is_network_id(ids[0]) and not is_network_id(base_entries(size=10)[0].id)
    # the id alone rebuilds the same network; another seed another one
    assert build_network(ids[1]).SerializeToString() == build_network(ids[1]).SerializeToString()
    assert build_network(ids[1]).SerializeToString() != build_network(network_id(99, 64, 14)).SerializeToString()


@pytest.mark.parametrize("bad", ["network:hw=32,seed=1", "network:depth=3,hw=32,seed=1,k=3",
                                 "network:depth=x,hw=32,seed=1", "network:depth=0,hw=32,seed=1",
                                 "network:depth=3,hw=4096,seed=1", "conv:depth=3,hw=32,seed=1", "network"])
def test_malformed_network_ids_are_refused(bad):
    with pytest.raises(ValueError, match="not a training network id"):
        parse_network_id(bad)


def test_training_networks_run_and_hold_the_sweeps_kinds_of_kernel():
    kinds = set()
    for entry_id in training_network_ids():
        model = network_model(entry_id)
        out = run(model, seeded_inputs(model))
        assert all(np.isfinite(v).all() for v in out.values())
        kinds |= {row.kind for row in kernel_rows(model, load_target("cpu-ort"))}
    assert {"conv", "depthwise", "elementwise", "pool", "matmul"} <= kinds


def test_rows_read_and_write_back_and_are_kept_apart_from_the_kernels(tmp_path, kernels):
    measurements = _with_networks(kernels, [1.2] * len(NETWORKS))
    path = tmp_path / "m.csv"
    write_measurements(path, measurements)
    back = read_measurements(path)
    assert [i for i, _ in back.network_rows] == NETWORKS
    assert [i for i, _ in back.kernel_rows] == [i for i, _ in kernels[1:]]
    assert back.overhead_s == pytest.approx(OVERHEAD)
    # they are no kernel's training data, nor anchors
    without = Measurements([(OVERHEAD_ID, back.overhead_s)] + back.kernel_rows)  # as written: 6 digits
    assert all(np.array_equal(a, b) for a, b in zip(training_matrix(P32, back), training_matrix(P32, without)))
    assert not any(is_network_id(i) for i in anchor_ids(back, count=200))


def test_a_malformed_network_row_is_a_one_line_error(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('id,latency_s\n"network:depth=3,hw=32",0.001\n')
    with pytest.raises(MeasurementsError, match=r"row 2: 'network:depth=3,hw=32' is not a sweep id .* nor a "
                                                r"training network's"):
        read_measurements(path)


def test_fitting_learns_the_median_whole_over_kernel_sum_of_the_training_networks(kernels):
    factors = [1.3, 1.25, 1.35, 1.3, 1.28, 1.32, 5.0, 0.2]  # two outliers: the median ignores them
    measurements = _with_networks(kernels, factors)
    fitted = CostModel.fit(P32, measurements)
    assert fitted.network_factor == pytest.approx(float(np.median(factors)), rel=1e-6)
    plain = CostModel.fit(P32, Measurements(kernels))
    model = load(DIGITS.path)
    kernel_part = plain.predict(model).latency_s - OVERHEAD
    assert fitted.predict(model).latency_s - OVERHEAD == pytest.approx(kernel_part * fitted.network_factor, rel=1e-6)
    # what the fitted model predicts for its own training networks is right at the median
    assert np.median(network_ratios(fitted, measurements)) == pytest.approx(1.0, rel=1e-6)
    # re-anchoring composes with the factor and keeps it
    anchored = fitted.rescaled(0.5)
    assert anchored.network_factor == fitted.network_factor
    assert anchored.predict(model).latency_s - OVERHEAD == pytest.approx(kernel_part * fitted.network_factor * 0.5,
                                                                          rel=1e-6)


def test_a_csv_without_network_rows_keeps_the_factor_one(kernels):
    fitted = CostModel.fit(P32, Measurements(kernels))
    assert fitted.network_factor == 1.0 and fitted.scale == 1.0


def test_a_device_profile_fits_with_or_without_network_rows(tmp_path, kernels):
    for name, measurements in (("with", _with_networks(kernels, [1.5] * len(NETWORKS))),
                               ("without", Measurements(kernels))):
        path = tmp_path / f"{name}-data.csv"
        write_measurements(path, measurements)
        fitted = fit_profile(P32, path, f"dev-{name}", tmp_path / f"dev-{name}.json")
        loaded = CostModel.fit(fitted.target, read_measurements(fitted.target.measurements_path()))
        assert loaded.network_factor == fitted.cost_model.network_factor
        assert loaded.network_factor == (pytest.approx(1.5, rel=1e-2) if name == "with" else 1.0)  # 6 digits
        # `costmodel fit` says when it scaled the kernels
        result = CliRunner().invoke(main, ["costmodel", "fit", "--target", "npu-p32", "--measurements", str(path),
                                           "--name", f"cli-{name}", "-o", str(tmp_path / f"cli-{name}.json")])
        assert result.exit_code == 0, result.output
        assert ("kernels scaled x1.50" in result.output) == (name == "with")


def test_a_measured_sweep_times_its_training_networks_after_the_kernels():
    entries = [SweepEntry.make("eltwise", c=8, hw=7, kind="relu", ctx=1)]
    small = [network_id(1, 32, 3), network_id(2, 16, 2)]
    result = measure_sweep(entries, load_target("cpu-ort"), networks=small)
    assert [i for i, _ in result.rows] == [OVERHEAD_ID, entries[0].id, *small]
    latency = dict(result.rows)
    assert all(latency[i] > latency[OVERHEAD_ID] for i in small)
    assert "2 training networks timed whole" in result.comments["networks"]
    assert isinstance(build_network(small[1]), onnx.ModelProto)


def test_a_device_times_the_training_networks_of_its_sweep_folder(tmp_path):
    entries = [SweepEntry.make("eltwise", c=8, hw=7, kind="relu", ctx=1)]
    small = [network_id(1, 32, 3), network_id(2, 16, 2)]
    sweep = tmp_path / "sweep"
    write_sweep(entries, sweep)
    assert write_training_networks(sweep, small) == small
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert [n["id"] for n in manifest["training_networks"]] == small and manifest["networks"]  # kernels kept
    assert (onnx.load(str(sweep / manifest["training_networks"][1]["file"])).SerializeToString()
            == build_network(small[1]).SerializeToString())
    done = subprocess.run([sys.executable, "-I", str(sweep / "profile_on_device.py"), "--threads", "1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    measurements = measurements_from_profiles(sweep, sweep / "profiles")
    assert [i for i, _ in measurements.network_rows] == small
    assert all(latency > measurements.overhead_s for _, latency in measurements.network_rows)
    # timings from a tampered file are a one-line error, not a row
    timings_path = sweep / "profiles" / "timings.json"
    timings = json.loads(timings_path.read_text())
    timings["training_networks"] = {"network:depth=3": 0.001}
    timings_path.write_text(json.dumps(timings))
    with pytest.raises(ProfileError, match=r"training network 'network:depth=3': not an id with a time"):
        measurements_from_profiles(sweep, sweep / "profiles")
    timings["training_networks"] = {small[0]: -1.0}
    timings_path.write_text(json.dumps(timings))
    with pytest.raises(ProfileError, match=r"not an id with a time"):
        measurements_from_profiles(sweep, sweep / "profiles")
