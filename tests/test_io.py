"""Loading and saving: nothing lost, nothing silently wrong, one-line errors.

The canonical form that loading produces is tested in tests/passes/test_canonicalize.py.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnx_tailor.errors import InputShapeError, ModelLoadError, TailorError
from onnx_tailor.ir import Model, check_equivalence, read_proto, run, runtime, save
from onnx_tailor.passes.canonicalize import load
from tests.graphs import GraphBuilder, tiny_mobilenet


@pytest.fixture
def tiny_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_mobilenet(), str(path))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load(tmp_path / "absent.onnx")


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("these are my notes, not a model\n" * 20)
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        load(path)


def test_truncated_file(tiny_path, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tiny_path.read_bytes()[: tiny_path.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        load(cut)


def test_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="is a directory"):
        load(tmp_path)


def test_opset_too_old(tmp_path):
    model = tiny_mobilenet()
    model.opset_import[0].version = 9
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="opset 9 is older than 11"):
        load(path)


def test_dynamic_batch_stays_dynamic(tiny_path):
    model = load(tiny_path)
    batch = model.graph_inputs[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value
    out = run(model, {"input": np.zeros((5, 3, 16, 16), np.float32)})
    assert next(iter(out.values())).shape == (5, 10)


def test_symbolic_spatial_dims_need_a_shape(paddle_models):
    model = load(paddle_models["paddle_cls"])
    with pytest.raises(InputShapeError, match=r"--input-shape x=1,3,N,N"):
        model.input_shapes


def test_unknown_input_name_in_shapes(tiny_path):
    with pytest.raises(InputShapeError, match="no input called"):
        load(tiny_path, {"image": (1, 3, 16, 16)})


def test_save_is_atomic_and_leaves_no_temporary_files(tiny_path, tmp_path):
    model = load(tiny_path)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    save(model, out)
    assert os.listdir(out.parent) == ["model.onnx"]
    assert Model(read_proto(out)).content_hash == model.content_hash


def test_save_refuses_to_overwrite_the_input_unless_asked(tiny_path):
    before = tiny_path.read_bytes()
    model = load(tiny_path)
    with pytest.raises(TailorError, match="is the input model"):
        save(model, tiny_path, input_path=tiny_path)
    assert tiny_path.read_bytes() == before
    save(model, tiny_path, input_path=tiny_path, overwrite_input=True)
    assert tiny_path.read_bytes() != before  # canonical form differs from the export


def conv_and_perturbed(change) -> tuple[Model, Model]:
    """A one-conv model, and a copy whose weight `change` edited (in place)."""
    b = GraphBuilder(seed=9)
    proto = b.build({"x": (1, 3, 4, 4)}, [b.conv("x", 3, 4, 1, name="conv")])
    perturbed = onnx.ModelProto()
    perturbed.CopyFrom(proto)
    weight = perturbed.graph.initializer[0]
    values = onnx.numpy_helper.to_array(weight).copy()
    change(values)
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    return Model(proto), Model(perturbed)


def test_equivalence_check_can_fail():
    original, perturbed = conv_and_perturbed(lambda w: np.put(w, 0, w.flat[0] + 1e-2))
    comparison = check_equivalence(original, perturbed)
    assert not comparison and "differs" in comparison.detail


def test_equivalence_allows_what_the_models_own_rounding_floor_allows(monkeypatch):
    """A model that amplifies rounding is held to a multiple of how far onnxruntime's own optimizations move
    it; an ordinary model's floor is far below the fixed tolerance, which then decides alone."""
    original, perturbed = conv_and_perturbed(lambda w: np.multiply(w, 1 + 1e-3, out=w))  # 10x the tolerance
    feeds = runtime.seeded_inputs(original)
    assert runtime.rounding_floor(original, feeds, run(original, feeds)) < 1e-5
    assert not check_equivalence(original, perturbed)
    monkeypatch.setattr(runtime, "rounding_floor", lambda model, feeds, reference: 5e-4)  # 4x: 2e-3 allowed
    assert check_equivalence(original, perturbed)
    monkeypatch.setattr(runtime, "rounding_floor", lambda model, feeds, reference: 1e-4)  # 4e-4: not enough
    assert not check_equivalence(original, perturbed)


def test_external_data_models_load(tmp_path):
    b = GraphBuilder(seed=10)
    proto = b.build({"x": (1, 64, 4, 4)}, [b.conv("x", 64, 64, 3)])
    path = tmp_path / "external.onnx"
    stored = onnx.ModelProto()
    stored.CopyFrom(proto)  # save_model moves the weights of the proto it is given out to the file
    onnx.save_model(stored, str(path), save_as_external_data=True, location="external.onnx.data", size_threshold=0)
    assert (tmp_path / "external.onnx.data").exists()
    model = load(path)
    assert check_equivalence(Model(proto), model)
