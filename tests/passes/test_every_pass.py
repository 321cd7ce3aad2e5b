"""Every pass, lossy ones included, on every test model as exported and canonical.

The rewritten model must pass the onnx checker and run in onnxruntime with
finite outputs, and a lossy pass must report the local error that an
independent recomputation (onnxruntime directly, `tests.graphs.tensor_value`)
finds on the same calibration inputs. Exactness itself is checked in
test_exact_passes.py; this is the broad net for crashes, invalid graphs and
dishonest error reports on models the passes were not written against.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnx_tailor.ir import run, seeded_inputs
from onnx_tailor.passes import Exactness, all_passes, apply_step, get_pass
from onnx_tailor.passes.canonicalize import load
from tests.graphs import tensor_value

# Parameters that give each pass sites on small models (the defaults target P = 32 and 99% energy).
PARAMS = {"align_channels": {"multiple": 16}, "pad_channels": {"multiple": 16}, "factor_low_rank": {"energy": 0.8}}
CALIBRATION_SAMPLES = 6


def _why_no_site(pass_name: str, canonical: bool, model) -> str | None:
    """When a pass legitimately finds nothing to do in a model, why; None when it must find a site."""
    ops = {n.op_type for n in model.nodes}
    if canonical and pass_name in ("simplify", "fold_batchnorm"):
        return "canonicalization already did this pass's work"
    if not canonical and pass_name in ("fuse_ibn_expansion", "scale_depth") and "BatchNormalization" in ops:
        return "IBN blocks are matched in canonical form; an unfolded BatchNorm sits between conv and activation"
    if not canonical and pass_name == "simplify" and not ops & {"Identity", "Dropout"}:
        return "the export has no redundant node (constant sub-graphs are checked by the pass itself)"
    return None


def _calibration(model) -> dict[str, np.ndarray]:
    samples = [seeded_inputs(model, seed) for seed in range(CALIBRATION_SAMPLES)]
    return {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}


@pytest.mark.parametrize("canonical", [False, True], ids=["exported", "canonical"])
@pytest.mark.parametrize("pass_name", list(all_passes()))
def test_every_pass_gives_a_valid_model_and_an_honest_error(model_case, pass_name, canonical):
    model = load(model_case.path, model_case.input_shapes or None, canonical=canonical)
    rewrite = get_pass(pass_name)
    params = PARAMS.get(pass_name, {})
    sites = rewrite.find(model, **params)
    declined = rewrite.declined(model, **params)
    assert all(d.reason.strip() for d in declined), "every declined near-site says why"
    if not sites:
        why = _why_no_site(pass_name, canonical, model)
        assert why, f"{pass_name} found no site in the {'canonical' if canonical else 'exported'} {model_case.name}"
        return
    site = sites[0]
    calib = _calibration(model) if rewrite.exactness is Exactness.LOSSY else None

    applied = apply_step(model, site, calib)

    onnx.checker.check_model(applied.model.proto, full_check=True)
    outputs = run(applied.model, seeded_inputs(applied.model, 1))
    assert all(np.isfinite(value).all() for value in outputs.values())
    if rewrite.exactness is Exactness.EXACT:
        assert applied.local_error is None
        return
    tensor = rewrite.output_tensor(model, site)
    reference, changed = tensor_value(model, tensor, calib), tensor_value(applied.model, tensor, calib)
    independent = np.linalg.norm(changed - reference) / np.linalg.norm(reference)
    assert applied.local_error == pytest.approx(independent, rel=1e-5, abs=1e-7)
