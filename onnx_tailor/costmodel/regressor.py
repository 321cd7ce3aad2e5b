"""The learned cost model: per-kernel regressors summed over the graph.

Training data is a measurements CSV (`id,latency_s`, sweep ids, `#` comment
lines for provenance), which is what ships for built-in targets and what a
user brings for a new device; nothing is pickled. For each kind of kernel
(conv, depthwise, matmul, elementwise, ...) a scikit-learn gradient-boosted
regressor learns log(measured latency / roofline prior) from the kernel's
features (`costmodel.features`). Predicting the ratio to a physical prior,
rather than the latency itself, lets the model extrapolate to kernels larger
than any it was trained on. Kinds with too few measurements fall back to
their median ratio; kinds with none use the prior alone (and say so).

A model's predicted latency is the per-run overhead (measured targets pay it
once per inference) plus the sum over its executed kernels, grouped with the
target's own fusion rules, each kernel scaled by the network factor when the
CSV holds whole training networks (`network:` rows, `costmodel.netfactor`):
the median over them of (whole run - overhead) / predicted kernel sum, which
takes out what summing kernels timed in small networks over- or
under-predicts whole networks by. A CSV without such rows keeps the factor 1.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import TailorError
from ..ir import Model
from ..ir.io import Outputs, write_text_atomic
from .features import FEATURE_NAMES, KernelRow, kernel_rows
from .measure import MIN_KERNEL_S, OVERHEAD_ID
from .netfactor import is_network_id, network_model, parse_network_id
from .npu import simulate
from .sweep import SweepEntry
from .target import Target, TargetError

MIN_ROWS_FOR_REGRESSOR = 20


class MeasurementsError(TailorError):
    """A measurements CSV that cannot be used."""


@dataclass
class Measurements:
    rows: list[tuple[str, float]]
    comments: dict[str, str] = field(default_factory=dict)

    @property
    def overhead_s(self) -> float:
        return next((v for k, v in self.rows if k == OVERHEAD_ID), 0.0)

    @property
    def kernel_rows(self) -> list[tuple[str, float]]:
        """The sweep kernels' rows: neither the overhead nor a whole training network."""
        return [(k, v) for k, v in self.rows if k != OVERHEAD_ID and not is_network_id(k)]

    @property
    def network_rows(self) -> list[tuple[str, float]]:
        """The whole training networks' rows (`costmodel.netfactor`)."""
        return [(k, v) for k, v in self.rows if is_network_id(k)]


def read_measurements(path: Path) -> Measurements:
    path = Path(path)
    if not path.is_file():
        raise MeasurementsError(f"{path}: no such measurements file")
    comments, rows = {}, []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MeasurementsError(f"{path}: cannot read: {exc}") from None
    body = []
    for line in lines:
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            comments[key.strip()] = value.strip()
        elif line.strip():
            body.append(line)
    reader = csv.DictReader(body)
    if reader.fieldnames is None or not {"id", "latency_s"} <= set(reader.fieldnames):
        raise MeasurementsError(f"{path}: needs a header with columns 'id' and 'latency_s'")
    for number, record in enumerate(reader, start=2):
        try:
            latency = float(record["latency_s"])
        except (TypeError, ValueError):
            raise MeasurementsError(f"{path}: row {number}: latency_s '{record['latency_s']}' is not a number") from None
        if not math.isfinite(latency) or latency <= 0:
            raise MeasurementsError(f"{path}: row {number}: latency_s must be a positive number, got {latency}")
        if record["id"] != OVERHEAD_ID:
            try:
                parse_network_id(record["id"]) if is_network_id(record["id"]) else SweepEntry.from_id(record["id"])
            except ValueError:
                raise MeasurementsError(f"{path}: row {number}: '{record['id']}' is not a sweep id "
                                        "(`onnx-tailor costmodel sweep` writes them) nor a training network's "
                                        "(`network:depth=..,hw=..,seed=..`)") from None
        rows.append((record["id"], latency))
    if not rows:
        raise MeasurementsError(f"{path}: no measurements in it")
    return Measurements(rows, comments)


def write_measurements(path: Path, measurements: Measurements) -> None:
    lines = [f"# {k}: {v}" for k, v in measurements.comments.items()] + ["id,latency_s"]
    lines += [f'"{entry_id}",{latency:.6g}' for entry_id, latency in measurements.rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def simulate_entries(entries, target: Target) -> list[tuple[str, float]]:
    """'Measure' sweep entries on a simulated target: the cycles of the op's own kernel."""
    rows = []
    for entry in entries:
        sim = simulate(entry.model(), target)
        cycles = next(k.cycles for k in sim.kernels if k.kernel.name == "op")
        rows.append((entry.id, cycles / target.clock_hz))
    return rows


def _training_row(entry: SweepEntry, target: Target) -> KernelRow | None:
    """The kernel whose latency an entry measured: the op's own kernel, found by name."""
    rows = kernel_rows(entry.model(), target)
    return next((r for r in rows if r.kernel.name == "op"), None)


FEATURES_VERSION = "10"  # bump when features.py (or how kernels.py groups and classifies) changes what it computes


def _cache_dir() -> Path:
    return Path(os.environ.get("ONNX_TAILOR_CACHE", Path.home() / ".cache" / "onnx-tailor")) / "costmodel"


def _target_key(target: Target) -> list:
    """What a target's rows depend on besides the measurements: features and the machine's description."""
    return [FEATURES_VERSION, FEATURE_NAMES, sorted((f.name, getattr(target, f.name)) for f in fields(Target)
                                                    if f.name not in ("source", "name", "description", "measurements"))]


def _cached_arrays(key_source: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`build()`'s arrays, kept as an .npz (read with allow_pickle=False) under a digest of `key_source`."""
    path = _cache_dir() / f"{hashlib.sha256(key_source.encode()).hexdigest()[:24]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as cached:
                return {name: cached[name] for name in cached.files}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with Outputs() as outputs:  # a unique temporary: two fits of one target never collide
            np.savez(outputs.reserve(path, suffix=".npz"), **arrays)
            outputs.commit()
    except (OSError, TailorError):
        pass  # no writable cache: build from scratch next time too
    return arrays


def training_matrix(target: Target, measurements: Measurements) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kind, features, log(latency / prior)) per measured kernel.

    A kernel that its sweep network's neighbour absorbed (filed at `MIN_KERNEL_S`: a residual Add that
    onnxruntime fused into the conv before it) is left out: whether it is absorbed depends on its
    neighbours, which a kernel's features do not see, and a log ratio cannot learn "sometimes nothing"
    (such rows pulled the element-wise regressor's predictions for large element-wise kernels down to
    a quarter of what they took in models).

    Building the features means building and shape-inferring every
    microbenchmark (a few ms each), so the matrix is cached as plain arrays
    keyed by everything it depends on.
    """
    def build() -> dict[str, np.ndarray]:
        kinds, features, ratios = [], [], []
        for entry_id, latency in measurements.kernel_rows:
            if latency <= MIN_KERNEL_S:
                continue
            row = _training_row(SweepEntry.from_id(entry_id), target)
            if row is None:
                continue
            kinds.append(row.kind)
            features.append(row.features)
            ratios.append(math.log(latency / row.prior_s))
        return {"kinds": np.array(kinds, dtype=str), "features": np.vstack(features), "ratios": np.array(ratios)}

    # Keyed by the kernel rows alone: the matrix does not depend on the training networks beside them.
    key = repr((*_target_key(target), [r for r in measurements.rows if not is_network_id(r[0])]))
    arrays = _cached_arrays(key, build)
    return arrays["kinds"], arrays["features"], arrays["ratios"]


def network_kernels(target: Target, measurements: Measurements) -> dict[str, np.ndarray]:
    """Every executed kernel of the training networks in `measurements`: its network (an index into
    `network_rows`), kind, prior and features; cached like `training_matrix` (building the 40 networks'
    rows took a second of every fit)."""
    ids = [entry_id for entry_id, _ in measurements.network_rows]

    def build() -> dict[str, np.ndarray]:
        networks, kinds, priors, features = [], [], [], []
        for index, entry_id in enumerate(ids):
            for row in kernel_rows(network_model(entry_id), target):
                networks.append(index)
                kinds.append(row.kind)
                priors.append(row.prior_s)
                features.append(row.features)
        return {"networks": np.array(networks, dtype=np.int64), "kinds": np.array(kinds, dtype=str),
                "priors": np.array(priors, dtype=np.float64),
                "features": np.vstack(features) if features else np.zeros((0, len(FEATURE_NAMES)))}

    return _cached_arrays(repr(("networks", *_target_key(target), ids)), build)


@dataclass(frozen=True)
class KernelPrediction:
    row: KernelRow
    latency_s: float


@dataclass(frozen=True)
class Prediction:
    latency_s: float
    overhead_s: float
    kernels: tuple[KernelPrediction, ...]
    unlearned_kinds: tuple[str, ...]  # kernel kinds costed by the prior alone


class CostModel:
    """Per-kind regressors of log(latency / prior) for one target."""

    def __init__(self, target: Target, regressors: dict, overhead_s: float, trained_rows: int, scale: float = 1.0,
                 network_factor: float = 1.0):
        self.target = target
        self.regressors = regressors  # kind -> fitted estimator, or a float (median log ratio)
        self.overhead_s = overhead_s
        self.trained_rows = trained_rows
        self.scale = scale  # every kernel's prediction times this (the network factor, then `rescaled`)
        self.network_factor = network_factor  # the part of `scale` that fitting learned from training networks

    def rescaled(self, factor: float, overhead_s: float | None = None) -> "CostModel":
        """The same regressors with every kernel's prediction times `factor`, and the per-run overhead
        `overhead_s` (default: as it was): a host that runs the sweep's kernels `factor` times as long
        now as when they were measured (`costmodel.anchor`). Rankings of kernels do not change."""
        if not factor > 0:
            raise ValueError(f"a cost model's scale must be positive, got {factor}")
        return CostModel(self.target, self.regressors, self.overhead_s if overhead_s is None else overhead_s,
                         self.trained_rows, self.scale * factor, self.network_factor)

    @classmethod
    def fit(cls, target: Target, measurements: Measurements) -> "CostModel":
        kinds, features_all, ratios_all = training_matrix(target, measurements)
        by_kind: dict[str, tuple[list, list]] = {}
        for kind, features, ratio in zip(kinds, features_all, ratios_all):
            rows, ratios = by_kind.setdefault(str(kind), ([], []))
            rows.append(features)
            ratios.append(ratio)
        regressors = {}
        for kind, (features, ratios) in sorted(by_kind.items()):
            if len(ratios) < MIN_ROWS_FOR_REGRESSOR:
                regressors[kind] = float(np.median(ratios))
                continue
            regressors[kind] = _Trees().fit(np.vstack(features), np.array(ratios))
        fitted = cls(target, regressors, measurements.overhead_s, sum(len(r) for _, r in by_kind.values()))
        ratios = network_ratios(fitted, measurements)
        if not ratios:
            return fitted
        factor = float(np.median(ratios))
        return cls(target, regressors, fitted.overhead_s, fitted.trained_rows, factor, factor)

    def predict_rows(self, rows: list[KernelRow]) -> list[float]:
        if not rows:
            return []
        return self.predict_arrays(np.array([r.kind for r in rows]), np.array([r.prior_s for r in rows]),
                                   np.vstack([r.features for r in rows])).tolist()

    def predict_arrays(self, kinds: np.ndarray, priors: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Each kernel's predicted latency from its kind, prior and features (one row of `features` each)."""
        out = np.array(priors, dtype=np.float64)
        for kind in np.unique(kinds):
            index = np.flatnonzero(kinds == kind)
            regressor = self.regressors.get(str(kind))
            if regressor is None:
                continue
            if isinstance(regressor, float):
                ratio = np.full(len(index), regressor)
            else:
                ratio = regressor.predict(features[index])
            out[index] *= np.exp(ratio)
        return out * self.scale

    def predict(self, model: Model) -> Prediction:
        rows = kernel_rows(model, self.target)
        latencies = self.predict_rows(rows)
        unlearned = sorted({r.kind for r in rows} - set(self.regressors))
        kernels = tuple(KernelPrediction(r, t) for r, t in zip(rows, latencies))
        return Prediction(self.overhead_s + sum(latencies), self.overhead_s, kernels, tuple(unlearned))


def network_ratios(cost_model: CostModel, measurements: Measurements) -> list[float]:
    """(whole run - overhead) / `cost_model`'s kernel sum (as scaled), per training network in `measurements`.

    The whole run less the overhead, not the whole run over the whole prediction: the factor scales the
    kernels alone, so that a small network (most of its run the overhead) weighs like a large one."""
    kernels = network_kernels(cost_model.target, measurements)
    predicted = cost_model.predict_arrays(kernels["kinds"], kernels["priors"], kernels["features"])
    sums = np.bincount(kernels["networks"], weights=predicted, minlength=len(measurements.network_rows))
    overhead = measurements.overhead_s
    return [(latency - overhead) / total for (_, latency), total in zip(measurements.network_rows, sums)
            if total > 0 and latency > overhead]


class _Trees:
    """Gradient-boosted trees on log(latency / prior).

    The classic GradientBoostingRegressor rather than the histogram one: with a
    few hundred rows per kind both fit in a blink, but the search predicts a
    few kernels at a time thousands of times, and the classic one predicts all
    its trees in one compiled call (the histogram one pays a threaded call per
    tree: 15x slower here).
    """

    def fit(self, features: np.ndarray, ratios: np.ndarray) -> "_Trees":
        from sklearn.ensemble import GradientBoostingRegressor  # heavy import: only when fitting

        self.trees = GradientBoostingRegressor(n_estimators=150, learning_rate=0.1, max_depth=4,
                                               min_samples_leaf=3, random_state=0)
        self.trees.fit(features, ratios)
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.trees.predict(features)


@lru_cache(maxsize=8)
def cost_model_for(target: Target) -> CostModel:
    """The target's learned model, fitted (deterministically) on first use from its measurements."""
    path = target.measurements_path()
    if path is None:
        raise TargetError(f"target {target.name} has no measurements to learn from; "
                          "build a profile with `onnx-tailor costmodel fit`")
    return CostModel.fit(target, read_measurements(path))
