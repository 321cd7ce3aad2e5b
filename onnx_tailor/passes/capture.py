"""Reading intermediate tensors of a model on calibration inputs.

Data-aware passes fit weights to what a layer actually sees: they run the
model once with the tensors they need exposed as extra outputs. `calib` is
always the calibration split's inputs (a dict from model input name to its
samples, `[N, ...]`, the layout of `accuracy.Dataset`); never the evaluation
split, which only judges. The samples run as `ir.run_samples` feeds them: in
batches of the model's fixed size when it fixes one, with each tensor joined
along its own batch axis.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..ir import Model, run, run_samples
from ..ir.runtime import representative_inputs

Calibration = dict[str, np.ndarray]


def exposing(model: Model, tensors: list[str]) -> Model:
    """The same model with `tensors` added to its graph outputs."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    present = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in dict.fromkeys(tensors) if t not in present)
    return model.with_proto(proto)


def capture(model: Model, tensors: list[str], calib: Calibration | None) -> dict[str, np.ndarray]:
    """Values of `tensors` on the calibration inputs (`representative_inputs` when there are none)."""
    exposed = exposing(model, tensors)
    if calib is None:  # one batch at the model's own input shapes, already as the model takes it
        outputs = run(exposed, representative_inputs(model))
    else:
        outputs, _ = run_samples(exposed, calib, what="the calibration data")
    return {t: outputs[t] for t in tensors}


def capture_fit(model: Model, inputs: list[str], targets: list[str], calib: Calibration | None,
                reference: Model | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What a lossy fit on `model` reads and aims for, with one run of each model: `inputs` as `model`
    computes them, and `targets` as `reference` (the model a sequence of rewrites started from) does
    where it has them with the same shape, elsewhere as `model` does.

    Aiming at the reference rather than at the already rewritten network lets a later step make up
    for the error earlier steps left upstream, instead of preserving it."""
    own = capture(model, [*inputs, *targets], calib)
    shared = [t for t in targets if reference is not None and reference is not model
              and reference.producer(t) is not None]
    theirs = capture(reference, shared, calib) if shared else {}
    aimed = {t: theirs[t] if t in theirs and theirs[t].shape == own[t].shape else own[t] for t in targets}
    return {t: own[t] for t in inputs}, aimed
