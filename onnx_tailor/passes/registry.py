"""The registry: every pass by name, in the order `onnx-tailor passes` lists them."""

from __future__ import annotations

from ..errors import PassError
from .base import Pass


def _all_passes() -> dict[str, Pass]:
    # Imported here so that adding a pass is one line, and importing the
    # registry never imports a pass module twice under two names.
    from .align_channels import AlignChannels
    from .densify_depthwise import DensifyDepthwise
    from .factor_low_rank import FactorLowRank
    from .fold_batchnorm import FoldBatchnorm
    from .fuse_ibn_expansion import FuseIbnExpansion
    from .pad_channels import PadChannels
    from .scale_depth import ScaleDepth
    from .simplify import Simplify

    passes = [Simplify(), FoldBatchnorm(), DensifyDepthwise(), PadChannels(),  # exact
              FuseIbnExpansion(), AlignChannels(), ScaleDepth(), FactorLowRank()]  # lossy
    return {p.name: p for p in passes}


_REGISTRY: dict[str, Pass] | None = None


def all_passes() -> dict[str, Pass]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _all_passes()
    return _REGISTRY


def get_pass(name: str) -> Pass:
    passes = all_passes()
    if name not in passes:
        raise PassError(f"unknown pass '{name}'; known passes: {', '.join(passes)}")
    return passes[name]
