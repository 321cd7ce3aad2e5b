"""The registry: every pass by name, in the order `onnx-tailor passes` lists them."""

from __future__ import annotations

from ..errors import PassError
from .align_channels import AlignChannels
from .base import Pass
from .densify_depthwise import DensifyDepthwise
from .factor_low_rank import FactorLowRank
from .fold_batchnorm import FoldBatchnorm
from .fuse_ibn_expansion import FuseIbnExpansion
from .pad_channels import PadChannels
from .scale_depth import ScaleDepth
from .simplify import Simplify

_PASSES: dict[str, Pass] = {p.name: p for p in (
    Simplify(), FoldBatchnorm(), DensifyDepthwise(), PadChannels(),  # exact
    FuseIbnExpansion(), AlignChannels(), ScaleDepth(), FactorLowRank(),  # lossy
)}


def all_passes() -> dict[str, Pass]:
    return dict(_PASSES)


def get_pass(name: str) -> Pass:
    if name not in _PASSES:
        raise PassError(f"unknown pass '{name}'; known passes: {', '.join(_PASSES)}")
    return _PASSES[name]
