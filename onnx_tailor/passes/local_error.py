"""The local error of a lossy rewrite: how much one tensor changed, on calibration inputs.

The search ranks lossy candidates by it before paying for a full accuracy
evaluation. It is the relative L2 error ||after - before|| / ||before|| of
the site's output tensor (a tensor both models share by name), measured on
the calibration inputs when there are some, else on seeded random inputs.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..ir import Model, run, seeded_inputs


def _exposing(model: Model, tensor: str) -> Model:
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    if tensor not in {o.name for o in proto.graph.output}:
        proto.graph.output.append(onnx.ValueInfoProto(name=tensor))
    return model.with_proto(proto)


def local_error(before: Model, after: Model, tensor: str, feeds: dict[str, np.ndarray] | None = None) -> float:
    feeds = feeds if feeds is not None else seeded_inputs(before)
    reference = run(_exposing(before, tensor), feeds)[tensor].astype(np.float64)
    changed = run(_exposing(after, tensor), feeds)[tensor].astype(np.float64)
    norm = np.linalg.norm(reference)
    return float(np.linalg.norm(changed - reference) / norm) if norm > 0 else float(np.linalg.norm(changed))
