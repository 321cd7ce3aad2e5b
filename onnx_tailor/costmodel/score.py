"""Scoring a model for a target: predicted latency, per-kernel table, and memory.

This is what the search calls on every candidate, so it does only what a
score needs: the learned model's prediction (fitted once per target and
process), parameters and peak activations; for a simulated target also the
simulator's ground truth, which costs about as much again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..analysis import memory_summary
from ..ir import Model
from .npu import simulate
from .regressor import CostModel, cost_model_for
from .target import Target


@dataclass(frozen=True)
class KernelScore:
    name: str
    kind: str
    ops: tuple[str, ...]
    predicted_s: float
    simulated_s: float | None


@dataclass
class CostReport:
    target: str
    latency_s: float  # predicted by the learned cost model
    simulated_s: float | None  # ground truth, for simulated targets
    params: int
    param_bytes: int
    peak_activation_bytes: int
    kernels: list[KernelScore] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self, per_kernel: bool = True) -> dict:
        """JSON-ready, latencies in milliseconds as everywhere: `latency_ms` predicted, `simulated_ms` the
        simulator's (None for measured targets); with `per_kernel`, every kernel's `predicted_ms` and
        `simulated_ms`."""
        row = {"target": self.target, "latency_ms": self.latency_s * 1e3,
               "simulated_ms": None if self.simulated_s is None else self.simulated_s * 1e3,
               "params": self.params, "param_bytes": self.param_bytes,
               "peak_activation_bytes": self.peak_activation_bytes, "warnings": list(self.warnings)}
        if per_kernel:
            row["kernels"] = [{"name": k.name, "kind": k.kind, "ops": list(k.ops), "predicted_ms": k.predicted_s * 1e3,
                               "simulated_ms": None if k.simulated_s is None else k.simulated_s * 1e3}
                              for k in self.kernels]
        return row


def score(model: Model, target: Target, with_simulation: bool = True,
          cost_model: CostModel | None = None) -> CostReport:
    """`cost_model`: another model of `target` than its own (e.g. `anchor.anchored_cost_model`'s)."""
    prediction = (cost_model or cost_model_for(target)).predict(model)
    simulated = {}
    warnings = [f"no measurements for {kind} kernels on {target.name}: costed by the roofline prior alone"
                for kind in prediction.unlearned_kinds]
    sim_total = None
    if target.simulated and with_simulation:
        sim = simulate(model, target)
        simulated = {k.kernel.name: k.cycles / target.clock_hz for k in sim.kernels}
        sim_total = sim.latency_s
        warnings += sim.warnings
    memory = memory_summary(model)
    kernels = [KernelScore(k.row.kernel.name, k.row.kind, (k.row.kernel.op_type, *k.row.kernel.fused),
                           k.latency_s, simulated.get(k.row.kernel.name)) for k in prediction.kernels]
    return CostReport(target.name, prediction.latency_s, sim_total, memory.params, memory.param_bytes,
                 memory.peak_activation_bytes, kernels, warnings)
