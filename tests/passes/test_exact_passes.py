"""Every exact pass over every model: outputs unchanged, input untouched, op counts as documented.

Each pass runs on two forms of each model: as exported (`canonical=False`,
where the clean-up passes have work to do) and canonical (what the CLI and
the search see). Outputs are compared with onnxruntime at ORT_DISABLE_ALL on
seeded inputs with batch 2, so the dynamic batch dimension is exercised too.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from onnx_tailor.ir import check_equivalence
from onnx_tailor.passes import Exactness, all_passes, apply_pass
from onnx_tailor.passes.canonicalize import load

EXACT = [name for name, p in all_passes().items() if p.exactness is Exactness.EXACT]


def _with_batch(shapes: dict, model) -> dict:
    base = shapes or {vi.name: model.input_shapes[vi.name] for vi in model.graph_inputs}
    return {name: (2,) + tuple(dims[1:]) for name, dims in base.items()}


def _ops(model) -> Counter:
    return Counter(n.op_type for n in model.nodes)


def _check_counts(pass_name, before, after, applied) -> None:
    """The op-count change each pass's docstring promises."""
    b, a = _ops(before), _ops(after)
    if pass_name == "fold_batchnorm":
        assert a["BatchNormalization"] == b["BatchNormalization"] - len(applied)
        assert a["Conv"] == b["Conv"]
    elif pass_name == "densify_depthwise":
        assert a == b
        grouped = [n for n in after.nodes if n.op_type == "Conv" and after.attr(n, "group", 1) > 1]
        assert not grouped
    elif pass_name == "pad_channels":
        assert a == b  # only weights change
        for site in applied:
            channels = after.declared_shape(after.node(site.anchor).input[1])[0]
            assert channels % site.param_dict["multiple"] == 0
    elif pass_name == "simplify":
        assert sum(a.values()) < sum(b.values())
        assert a["Identity"] == 0 and a["Dropout"] == 0
    else:  # a new exact pass must say here what it changes
        pytest.fail(f"no op-count expectation for {pass_name}")


@pytest.mark.parametrize("canonical", [False, True], ids=["exported", "canonical"])
@pytest.mark.parametrize("pass_name", EXACT)
def test_exact_pass_keeps_outputs(model_case, pass_name, canonical):
    file_hash = hashlib.sha256(model_case.path.read_bytes()).hexdigest()
    model = load(model_case.path, model_case.input_shapes or None, canonical=canonical)
    model = model.with_input_shapes(_with_batch(model_case.input_shapes, model))
    serialized = model.serialized

    result = apply_pass(model, pass_name)  # verifies internally; checked again here, independently

    if canonical and pass_name in ("simplify", "fold_batchnorm"):
        assert not result.sites, "canonicalization should have left nothing for this pass"
        return
    if pass_name in ("densify_depthwise", "pad_channels", "fold_batchnorm"):
        assert result.sites, f"{pass_name} found no site in {model_case.name}"
    if not result.sites:
        pytest.skip(f"{pass_name} has no site in the exported {model_case.name} model")
    comparison = check_equivalence(model, result.model, rtol=1e-4, seed=1)
    assert comparison, comparison.detail
    _check_counts(pass_name, model, result.model, result.sites)
    assert model.serialized == serialized, "the input model was modified in memory"
    assert hashlib.sha256(model_case.path.read_bytes()).hexdigest() == file_hash
