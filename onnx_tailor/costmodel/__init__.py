"""Cost models: target profiles, the simulated NPU, measurement, and the learned regressor."""

from .npu import KernelCost, Simulation, simulate
from .target import DEFAULT_TARGET, Target, TargetError, builtin_targets, load_target

__all__ = ["DEFAULT_TARGET", "KernelCost", "Simulation", "Target", "TargetError", "builtin_targets",
           "load_target", "simulate"]
