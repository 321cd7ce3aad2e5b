"""A profile for a new device: measuring the op sweep on a target, and fitting a profile from measurements.

These are the last two of the three steps `onnx-tailor costmodel --help`
describes (the first, writing the sweep, is `sweep.write_sweep`):
- `measure_sweep` takes the sweep's latencies on a target this machine can
  reach: simulated for `npu` targets, each kernel profiled inside a small
  network with onnxruntime for `ort` ones (`costmodel.measure`).
  An `import` target is a device out of reach: its sweep is measured there,
  the same way: `costmodel sweep` writes each kernel's network and
  `profile_on_device.py` into the sweep folder; that script, run on the device
  with nothing but onnxruntime, writes the profiler's traces, and
  `measurements_from_profiles` (`costmodel measure --profiles`) reads them
  back here into the same measurements CSV. The script's docstring gives the
  commands.
- `fit_profile` turns measurements (from either, or from the device) into a
  profile JSON: the base target's datasheet fields, the new name, and the
  measurements copied beside it, so that the profile is usable as a target.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import onnx

from ..ir.io import write_text_atomic
from .measure import MIN_KERNEL_S, OVERHEAD_ID, PROFILE_WARMUP, machine_description, measure_entries
from .netfactor import measure_networks, parse_network_id
from .profiler import ProfileError, profiler_bias_s, read_events, read_profile
from .regressor import CostModel, Measurements, read_measurements, simulate_entries
from .sweep import CALIBRATION_NODES, SweepEntry, read_networks
from .target import Target, TargetError, parse_target


def measure_sweep(entries: Iterable[SweepEntry], target: Target,
                  progress: Callable[[int, int], None] | None = None,
                  networks: list[str] | None = None) -> Measurements:
    """The latency of every sweep entry on `target`, with where and how it was taken as comments.

    `progress(done, total)` is called after each entry timed with onnxruntime
    (simulating is quick and reports nothing). An `ort` target also times
    the training networks `networks` whole (default: `netfactor.training_network_ids()`), right after
    the kernels; a simulated one needs none (its kernels sum to the network by construction).
    """
    entries = list(entries)
    start = time.perf_counter()
    if target.simulated:
        rows = simulate_entries(entries, target)
        machine = f"simulated {target.name} (docs/npu-target.md)"
        how = {}
    elif target.kind == "ort":
        rows, how = measure_entries(entries, target, progress)
        # Whole training networks, right after their kernels: how their sum relates to a whole run.
        timed = measure_networks(target, networks)
        rows += timed
        how["networks"] = (f"{len(timed)} training networks timed whole (costmodel.netfactor): "
                           "the thread's CPU time, interleaved medians")
        machine = machine_description(target)
    else:
        raise TargetError(f"target {target.name} is imported: measure the sweep on its device and `costmodel fit` it")
    comments = {"target": target.name, "machine": machine, **how, "entries": str(len(rows)),
                "took_s": f"{time.perf_counter() - start:.0f}"}
    return Measurements(rows, comments)


def measurements_from_profiles(sweep_dir: str | Path, profiles_dir: str | Path) -> Measurements:
    """The measurements of a sweep profiled on another device by `profile_on_device.py`, as
    `measure.measure_in_network` takes them here: each kernel's share of its network's node time in the
    trace (each node less the profiler's per-node bias that the script's calibration chains give) times
    the network's unprofiled run less the device's per-run overhead, under its in-context id; and that
    overhead. Profiles written before the script timed the networks give the kernel's own node time."""
    profiles = Path(profiles_dir)
    timings_path = profiles / "timings.json"
    try:
        timings = json.loads(timings_path.read_text())
        overhead, short, long = (float(timings[k]) for k in ("overhead_s", "calibration_short_s",
                                                              "calibration_long_s"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProfileError(f"{timings_path}: not the timings profile_on_device.py writes ({exc})") from None
    bias = profiler_bias_s(short, long, read_events(profiles / "calibration_long.json"), CALIBRATION_NODES,
                           PROFILE_WARMUP)
    runs = timings.get("networks") or {}
    rows = [(OVERHEAD_ID, overhead)]
    for entry, network_path in read_networks(Path(sweep_dir)):
        stem = network_path.stem
        measured = read_profile(onnx.load(str(network_path)), profiles / f"{stem}.json",
                                profiles / f"{stem}.optimized.onnx", PROFILE_WARMUP, bias)
        latency = measured.share * max(float(runs[stem]) - overhead, 0.0) if stem in runs else measured.latency_s
        rows.append((entry.id, max(latency, MIN_KERNEL_S)))
    for entry_id, latency in (timings.get("training_networks") or {}).items():
        try:
            parse_network_id(entry_id)
            if not float(latency) > 0:
                raise ValueError(latency)
            rows.append((entry_id, float(latency)))
        except (TypeError, ValueError):
            raise ProfileError(f"{timings_path}: training network {entry_id!r}: not an id with a time "
                               "(write the sweep again with `onnx-tailor costmodel sweep`)") from None
    method = ("each kernel's share of its small network's profile times the network's run (profile_on_device.py)"
              if runs else "each kernel profiled inside a small network (profile_on_device.py)")
    return Measurements(rows, {"machine": f"profiled elsewhere: {timings.get('machine', '?')}",
                               "method": method,
                               "profiler_bias_us": f"{bias * 1e6:.3f}", "entries": str(len(rows))})


@dataclass(frozen=True)
class FittedProfile:
    """What `fit_profile` wrote: the profile as it loads again, and the cost model fitted on its measurements."""

    target: Target
    cost_model: CostModel

    @property
    def path(self) -> Path:
        return self.target.source


def _profile_kind(base: Target) -> str:
    """The kind of a profile fitted on `base`: npu and ort keep their kind; any other is imported."""
    if base.simulated:
        return "npu"
    return "ort" if base.kind == "ort" else "import"


def fit_profile(base: Target, measurements_path: str | Path, name: str, output: str | Path) -> FittedProfile:
    """Write the profile `output` (.json) of a device described by `base`, measured in `measurements_path`.

    The base target gives the datasheet fields (P, lanes, clock, memory,
    bandwidth, fusion); the measurements (a CSV of `id,latency_s`) are
    checked by fitting a cost model on them before anything is written, then
    copied beside the profile as `output` with the suffix .csv (refused when
    another file is there). The written profile is loaded back, so that what
    is written is known to load.
    """
    source = Path(measurements_path)
    cost_model = CostModel.fit(base, read_measurements(source))  # fails here, not later, if the data cannot train
    out = Path(output)
    csv_path = out.with_suffix(".csv")
    # The base's profile fields as JSON (less what to_dict derives for display), under the new name.
    profile = {key: value for key, value in base.to_dict().items() if key not in ("precision", "profile")}
    profile.update(name=name, kind=_profile_kind(base),
                   description=f"{name}: fitted from {source.name} on the {base.name} profile",
                   measurements=csv_path.name)
    if profile["kind"] == "import":
        profile.pop("execution_provider")
    text = source.read_text()
    if csv_path.exists() and (not csv_path.is_file() or csv_path.read_text() != text):
        # The profile names its CSV by the profile's own name; another file there is someone's data.
        raise TargetError(f"{csv_path} exists and holds other measurements; the profile {out.name} keeps its "
                          "measurements there: move it, or choose another -o")
    write_text_atomic(csv_path, text)
    write_text_atomic(out, json.dumps(profile, indent=2) + "\n")
    return FittedProfile(parse_target(out), cost_model)
