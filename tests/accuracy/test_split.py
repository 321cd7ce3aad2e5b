"""The calibration / evaluation split: deterministic, disjoint, complete."""

from __future__ import annotations

import numpy as np
import pytest

from onnx_tailor import accuracy
from onnx_tailor.errors import DataError


def test_split_is_disjoint_covers_every_sample_and_holds_the_right_samples(digits_data):
    split = accuracy.split_dataset(digits_data)
    calibration, evaluation = split.calibration_indices, split.evaluation_indices
    assert len(calibration) == len(evaluation) == 180
    assert not set(calibration) & set(evaluation)
    np.testing.assert_array_equal(np.sort(np.concatenate([calibration, evaluation])), np.arange(360))
    for part, indices in ((split.calibration, calibration), (split.evaluation, evaluation)):
        np.testing.assert_array_equal(part.inputs["input"], digits_data.inputs["input"][indices])
        np.testing.assert_array_equal(part.labels, digits_data.labels[indices])
    assert "calibration 180 of 360, seed 0" in split.calibration.description


def test_same_data_and_seed_give_the_same_split_and_another_seed_another(digits_data):
    first, again = accuracy.split_dataset(digits_data, seed=3), accuracy.split_dataset(digits_data, seed=3)
    np.testing.assert_array_equal(first.calibration_indices, again.calibration_indices)
    assert first.evaluation.fingerprint == again.evaluation.fingerprint
    other = accuracy.split_dataset(digits_data, seed=4)
    assert not np.array_equal(first.calibration_indices, other.calibration_indices)


def test_a_copy_of_the_data_splits_the_same_way(digits_data):
    copy = accuracy.Dataset({"input": digits_data.inputs["input"].copy()}, digits_data.labels.copy())
    np.testing.assert_array_equal(accuracy.split_dataset(copy).evaluation_indices,
                                  accuracy.split_dataset(digits_data).evaluation_indices)


@pytest.mark.parametrize("calibration, expected", [(0.25, 90), (0.5, 180), (100, 100), (1, 1), (359, 359)])
def test_calibration_as_a_fraction_or_a_count(digits_data, calibration, expected):
    split = accuracy.split_dataset(digits_data, calibration)
    assert len(split.calibration) == expected and len(split.evaluation) == 360 - expected


@pytest.mark.parametrize("calibration, message", [
    (0.0, "calibration fraction 0 is not between 0 and 1"),
    (1.5, "calibration fraction 1.5 is not between 0 and 1"),
    (360, "a calibration count of 360 of 360 samples leaves one part empty"),
    (0.001, r"a calibration fraction of 0.001 \(0 samples\) of 360 samples leaves one part empty"),
    (True, "calibration is a fraction in"),
])
def test_splits_that_leave_a_part_empty_are_refused(digits_data, calibration, message):
    with pytest.raises(DataError, match=message):
        accuracy.split_dataset(digits_data, calibration)


def test_three_way_split_is_disjoint_complete_and_keeps_the_calibration_of_the_two_way_split(digits_data):
    split = accuracy.split_three(digits_data, (0.3, 0.35, 0.35), seed=2)
    assert (len(split.calibration), len(split.selection), len(split.test)) == (108, 126, 126)
    rows = [{r.tobytes() for r in part.inputs["input"]} for part in (split.calibration, split.selection, split.test)]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    assert sum(map(len, rows)) == len({r.tobytes() for r in digits_data.inputs["input"]})
    # A recipe's lossy steps replay on the calibration part alone: it depends on its own fraction only.
    two_way = accuracy.split_dataset(digits_data, 0.3, seed=2)
    assert split.calibration.fingerprint == two_way.calibration.fingerprint
    assert split.test.fingerprint == accuracy.split_three(digits_data, (0.3, 0.35, 0.35), seed=2).test.fingerprint
    assert "calibration 108, selection 126, test 126" in split.describe()


@pytest.mark.parametrize("text", ["0.5,0.5", "0.5,0.6,0.1", "a,b,c", "0,0.5,0.5", "0.4,0.4,0.3"])
def test_a_split_that_is_not_three_fractions_adding_to_one_is_refused(text):
    with pytest.raises(DataError, match="is not three fractions"):
        accuracy.parse_split(text)


def test_a_split_that_leaves_a_judging_part_empty_is_refused(digits_data):
    tiny = digits_data.subset([0, 1, 2], "3 digits")
    with pytest.raises(DataError, match="leave the selection or the test part empty"):
        accuracy.split_three(tiny, (0.6, 0.35, 0.05))
