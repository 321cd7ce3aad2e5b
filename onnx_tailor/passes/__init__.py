"""Rewrite passes: one per module, each a `Pass` with `survey()` and `rewrite()`; `apply_step` applies one."""

from .apply import Applied, PassApplied, apply_pass, apply_step, find_site
from .base import Declined, Exactness, Param, Pass, Site, Step, verify_exact
from .canonicalize import load
from .registry import all_passes, get_pass

__all__ = ["Applied", "Declined", "Exactness", "Param", "Pass", "PassApplied", "Site", "Step", "all_passes",
           "apply_pass", "apply_step", "find_site", "get_pass", "load", "verify_exact"]
