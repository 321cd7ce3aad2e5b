"""A profile for a new device: measuring the op sweep on a target, and fitting a profile from measurements.

These are the last two of the three steps `onnx-tailor costmodel --help`
describes (the first, writing the sweep, is `sweep.write_sweep`):
- `measure_sweep` takes the sweep's latencies on a target this machine can
  reach: simulated for `npu` targets, timed with onnxruntime for `ort` ones.
  An `import` target is a device out of reach: its sweep is measured there.
- `fit_profile` turns measurements (from either, or from the device) into a
  profile JSON: the base target's datasheet fields, the new name, and the
  measurements copied beside it, so that the profile is usable as a target.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

from ..ir.io import write_text_atomic
from .measure import machine_description, measure_entries
from .regressor import CostModel, Measurements, read_measurements, simulate_entries
from .sweep import SweepEntry
from .target import Target, TargetError, parse_target


def measure_sweep(entries: Iterable[SweepEntry], target: Target,
                  progress: Callable[[int, int], None] | None = None) -> Measurements:
    """The latency of every sweep entry on `target`, with where and how it was taken as comments.

    `progress(done, total)` is called after each entry timed with onnxruntime
    (simulating is quick and reports nothing).
    """
    entries = list(entries)
    start = time.perf_counter()
    if target.simulated:
        rows = simulate_entries(entries, target)
        machine = f"simulated {target.name} (shared/design/npu-target.md)"
    elif target.kind == "ort":
        rows = measure_entries(entries, target, progress)
        machine = machine_description(target)
    else:
        raise TargetError(f"target {target.name} is imported: measure the sweep on its device and `costmodel fit` it")
    comments = {"target": target.name, "machine": machine, "entries": str(len(rows)),
                "took_s": f"{time.perf_counter() - start:.0f}"}
    return Measurements(rows, comments)


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
    profile = {f.name: getattr(base, f.name) for f in fields(base) if f.name != "source"}
    profile.update(name=name, kind=_profile_kind(base),
                   description=f"{name}: fitted from {source.name} on the {base.name} profile",
                   fusable_activations=list(base.fusable_activations), measurements=csv_path.name)
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
