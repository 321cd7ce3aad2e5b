"""Datasets: .npz and random sources, and every way data can fail to fit a model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from onnx_tailor import accuracy
from onnx_tailor.accuracy.data import _ELEMENT_TYPES
from onnx_tailor.errors import DataError, InputShapeError

from .conftest import DIGITS_EVAL, identity_model


def save_npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def digits_arrays():
    with np.load(DIGITS_EVAL) as archive:
        return archive["input"], archive["labels"]


def test_npz_loads_inputs_and_labels(digits, digits_data, digits_arrays):
    inputs, labels = digits_arrays
    assert len(digits_data) == 360
    np.testing.assert_array_equal(digits_data.inputs["input"], inputs)
    np.testing.assert_array_equal(digits_data.labels, labels)
    assert str(digits_data) == f"{DIGITS_EVAL} (360 samples, labels 0-9)"


def test_float64_is_cast_to_the_models_float32(tmp_path, digits, digits_arrays):
    inputs, labels = digits_arrays
    data = accuracy.load_data(save_npz(tmp_path, input=inputs.astype(np.float64), labels=labels), digits)
    assert data.inputs["input"].dtype == np.float32
    np.testing.assert_array_equal(data.inputs["input"], inputs)


@pytest.mark.parametrize("case, message", [
    ("wrong name", "no array for model input 'input' and array 'image' is no model input; "
                   "the model's inputs are: input [batch,1,32,32] float32"),
    ("wrong shape", "input 'input' has samples of shape [1,28,28], the model takes [1,32,32] per sample"),
    ("int for float", "input 'input' is int64, the model takes float32"),
    ("labels too short", "359 labels for 360 samples"),
    ("one-hot labels", "labels have shape (360, 10); give one class index per sample, shape [N] (not one-hot rows)"),
    ("float labels", "labels are float64; give integer class indices"),
    ("NaN", "input 'input' has NaN or infinite values in 2 of 360 samples (the first is sample 7)"),
    ("no samples", "holds no samples"),
])
def test_bad_npz_data_gets_a_one_line_error(case, message, tmp_path, digits, digits_arrays):
    inputs, labels = digits_arrays
    nan = inputs.copy()
    nan[7, 0, 3, 3] = np.nan
    nan[300, 0, 0, 0] = np.inf
    arrays = {
        "wrong name": dict(image=inputs, labels=labels),
        "wrong shape": dict(input=inputs[:, :, :28, :28], labels=labels),
        "int for float": dict(input=inputs.astype(np.int64), labels=labels),
        "labels too short": dict(input=inputs, labels=labels[:-1]),
        "one-hot labels": dict(input=inputs, labels=np.eye(10)[labels]),
        "float labels": dict(input=inputs, labels=labels.astype(np.float64)),
        "NaN": dict(input=nan, labels=labels),
        "no samples": dict(input=inputs[:0]),
    }[case]
    with pytest.raises(DataError) as error:
        accuracy.load_data(save_npz(tmp_path, **arrays), digits)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    (b"this is no archive\n", "not an .npz archive"),
    (None, "no such file or folder"),
])
def test_unreadable_or_missing_file(content, message, tmp_path, digits):
    path = tmp_path / "data.npz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        accuracy.load_data(path, digits)


def test_truncated_or_corrupt_archives_are_reported(tmp_path, digits, digits_arrays):
    path = save_npz(tmp_path, input=digits_arrays[0])
    whole = path.read_bytes()
    path.write_bytes(whole[:-1000])
    with pytest.raises(DataError, match=r"data.npz: not an .npz archive \(is it truncated\?\)"):
        accuracy.load_data(path, digits)
    middle = len(whole) // 2
    path.write_bytes(whole[:middle] + bytes(100) + whole[middle + 100:])
    with pytest.raises(DataError, match="data.npz: cannot read: Bad CRC-32 for file 'input.npy'"):
        accuracy.load_data(path, digits)


def test_object_arrays_are_refused_not_unpickled(tmp_path, digits):
    path = save_npz(tmp_path, input=np.array([{}, {}], dtype=object))
    with pytest.raises(DataError, match="cannot read: Object arrays cannot be loaded when allow_pickle=False"):
        accuracy.load_data(path, digits)


def test_arrays_must_agree_on_the_number_of_samples():
    with pytest.raises(DataError, match=r"different numbers of samples \('a' 3, 'b' 4\)"):
        accuracy.Dataset({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})


def test_dynamic_dimensions_match_any_size_and_fixed_ones_must_match():
    model = identity_model({"x": (TensorProto.FLOAT, ["n", 3, "h", "w"])})
    ok = accuracy.validate(accuracy.Dataset({"x": np.zeros((5, 3, 7, 9), np.float32)}), model)
    assert ok.inputs["x"].shape == (5, 3, 7, 9)
    with pytest.raises(DataError, match=r"samples of shape \[4,7,9\], the model takes \[3,\?,\?\]"):
        accuracy.validate(accuracy.Dataset({"x": np.zeros((5, 4, 7, 9), np.float32)}), model)
    with pytest.raises(DataError, match=r"samples of shape \[3,7\], the model takes \[3,\?,\?\]"):
        accuracy.validate(accuracy.Dataset({"x": np.zeros((5, 3, 7), np.float32)}), model)


def test_integer_inputs_cast_between_widths_but_not_from_floats():
    model = identity_model({"ids": (TensorProto.INT64, ["n", 4])})
    cast = accuracy.validate(accuracy.Dataset({"ids": np.arange(8, dtype=np.int32).reshape(2, 4)}), model)
    assert cast.inputs["ids"].dtype == np.int64
    with pytest.raises(DataError, match="input 'ids' is float32, the model takes int64"):
        accuracy.validate(accuracy.Dataset({"ids": np.zeros((2, 4), np.float32)}), model)


def test_every_input_of_a_multi_input_model_is_checked():
    model = identity_model({"a": (TensorProto.FLOAT, ["n", 2]), "b": (TensorProto.FLOAT, ["n", 3])})
    with pytest.raises(DataError, match=r"no array for model input 'b'; the model's inputs are: "
                                        r"a \[n,2\] float32; b \[n,3\] float32"):
        accuracy.validate(accuracy.Dataset({"a": np.zeros((4, 2), np.float32)}), model)


def test_random_data_is_seeded_shape_correct_and_unlabelled(digits):
    first = accuracy.load_data("random", digits)
    again = accuracy.load_data("random", digits)
    other = accuracy.load_data("random", digits, samples=10, seed=1)
    assert first.inputs["input"].shape == (64, 1, 32, 32) and first.inputs["input"].dtype == np.float32
    assert first.labels is None
    assert first.fingerprint == again.fingerprint
    np.testing.assert_array_equal(first.inputs["input"], again.inputs["input"])
    assert other.inputs["input"].shape == (10, 1, 32, 32)
    assert not np.array_equal(other.inputs["input"], first.inputs["input"][:10])


def test_random_data_needs_concrete_shapes():
    model = identity_model({"x": (TensorProto.FLOAT, ["n", 3, "h", "w"])})
    with pytest.raises(InputShapeError, match="--input-shape x=1,3,N,N"):
        accuracy.load_data("random", model)
    sized = accuracy.load_data("random", model.with_input_shapes({"x": (1, 3, 8, 6)}), samples=5)
    assert sized.inputs["x"].shape == (5, 3, 8, 6)


def test_element_type_table_matches_onnx():
    # data.py may not import onnx, so it spells the type numbers out; hold them to onnx's own table.
    for elem, dtype in _ELEMENT_TYPES.items():
        assert np.dtype(dtype) == onnx.helper.tensor_dtype_to_np_dtype(elem)
