"""The search: which rewrites, in which order, under accuracy and memory constraints."""

from .constraints import AccuracyBudget, Constraints, parse_max_drop
from .optimize import STRATEGIES, NoFeasibleModel, OptimizeResult, optimize, split_data
from .provenance import stamped
from .recipe import Recipe, RecipeError, read_recipe, replay
from .report import check_plotting_available, format_report, plot_pareto

__all__ = ["AccuracyBudget", "Constraints", "NoFeasibleModel", "OptimizeResult", "Recipe", "RecipeError",
           "STRATEGIES", "check_plotting_available", "format_report", "optimize", "parse_max_drop", "plot_pareto",
           "read_recipe", "replay", "split_data", "stamped"]
