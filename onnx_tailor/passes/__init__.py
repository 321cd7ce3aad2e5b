"""Rewrite passes: one per module, each a `Pass` with `survey()` and `rewrite()`."""

from .base import Declined, Exactness, Param, Pass, Site, verify_exact
from .canonicalize import load
from .driver import Applied, apply_pass
from .registry import all_passes, get_pass

__all__ = ["Applied", "Declined", "Exactness", "Param", "Pass", "Site", "all_passes", "apply_pass",
           "get_pass", "load", "verify_exact"]
