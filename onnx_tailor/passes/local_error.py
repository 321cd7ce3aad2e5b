"""The local error of a lossy rewrite: how much one tensor changed, on calibration inputs.

The search ranks lossy candidates by it before paying for a full accuracy
evaluation. It is the relative L2 error ||after - before|| / ||before|| of
the site's output tensor (a tensor both models share by name), measured on
the calibration inputs when there are some, else on seeded random inputs.
"""

from __future__ import annotations

import numpy as np

from ..ir import Model
from .capture import Calibration, capture


def relative_error(reference: np.ndarray, changed: np.ndarray) -> float:
    reference, changed = reference.astype(np.float64), changed.astype(np.float64)
    norm = np.linalg.norm(reference)
    return float(np.linalg.norm(changed - reference) / norm) if norm > 0 else float(np.linalg.norm(changed))


def local_error(before: Model, after: Model, tensor: str, calib: Calibration | None = None) -> float:
    return relative_error(capture(before, [tensor], calib)[tensor], capture(after, [tensor], calib)[tensor])
