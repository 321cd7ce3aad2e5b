"""The search: which rewrites, in which order, under accuracy and memory constraints."""

from .constraints import DEFAULT_MAX_DROP, AccuracyBudget, Constraints, parse_max_drop
from .optimize import STRATEGIES, NoFeasibleModel, OptimizeResult, optimize, split_data
from .provenance import stamped
from .recipe import SPLIT_PARTS, Recipe, RecipeError, read_recipe, replay, split_part
from .report import REPORT_FORMAT, check_plotting_available, format_report, plot_pareto

__all__ = ["DEFAULT_MAX_DROP", "REPORT_FORMAT", "SPLIT_PARTS", "AccuracyBudget", "Constraints", "NoFeasibleModel",
           "OptimizeResult", "Recipe", "RecipeError", "STRATEGIES", "check_plotting_available", "format_report",
           "optimize", "parse_max_drop", "plot_pareto", "read_recipe", "replay", "split_data", "split_part", "stamped"]
