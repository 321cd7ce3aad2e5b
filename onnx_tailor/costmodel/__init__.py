"""Cost models: target profiles, the simulated NPU, measurement, and the learned regressor."""

from .npu import KernelCost, Simulation, simulate
from .profile import FittedProfile, fit_profile, measure_sweep
from .regressor import CostModel, Measurements, MeasurementsError, cost_model_for, read_measurements
from .score import CostReport, score
from .target import DEFAULT_TARGET, Target, TargetError, builtin_targets, load_target

__all__ = ["DEFAULT_TARGET", "CostModel", "CostReport", "FittedProfile", "KernelCost", "Measurements",
           "MeasurementsError", "Simulation", "Target", "TargetError", "builtin_targets", "cost_model_for",
           "fit_profile", "load_target", "measure_sweep", "read_measurements", "score", "simulate"]
