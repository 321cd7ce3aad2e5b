"""Image folders: class sub-folders as labels, preprocessing as the spec says, clear errors."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

from onnx_tailor import accuracy
from onnx_tailor.errors import DataError
from onnx_tailor.ir import Model
from tests.graphs import tiny_mobilenet

from .conftest import DIGITS_EVAL, FLOAT, identity_model

DIGITS_MEAN, DIGITS_STD = 0.305383, 0.376119  # models/README.md: the training-set statistics


@pytest.fixture
def Image():
    return pytest.importorskip("PIL.Image", reason="Pillow (the 'images' extra) is not installed: pip install pillow")


@pytest.fixture(scope="module")
def tiny() -> Model:
    """3 channels, 16x16, NCHW, 10 classes."""
    return Model(onnx.shape_inference.infer_shapes(tiny_mobilenet()))


def solid(Image, path, rgb, size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def test_class_subfolders_give_sorted_labels_and_normalized_pixels(Image, tmp_path, tiny):
    solid(Image, tmp_path / "dog" / "a.png", (255, 0, 51))
    solid(Image, tmp_path / "dog" / "b.png", (0, 102, 255))
    solid(Image, tmp_path / "cat" / "c.png", (51, 51, 51))
    (tmp_path / "emu").mkdir()  # an empty class still holds its index
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    spec = '{"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5]}'
    data = accuracy.load_data(tmp_path, tiny, image_spec=spec)
    assert data.classes == ("cat", "dog", "emu")
    np.testing.assert_array_equal(data.labels, [0, 1, 1])
    pixels = data.inputs["input"]
    assert pixels.shape == (3, 3, 16, 16) and pixels.dtype == np.float32  # resized to the model's 16x16
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.5])
    for index, rgb in enumerate([(51, 51, 51), (255, 0, 51), (0, 102, 255)]):  # cat/c, dog/a, dog/b
        expected = (np.array(rgb) / 255 - mean) / std
        np.testing.assert_allclose(pixels[index].mean(axis=(1, 2)), expected, rtol=1e-6)
        assert np.ptp(pixels[index], axis=(1, 2)).max() < 1e-6  # a solid image stays solid


def test_bgr_order_reverses_the_channels(Image, tmp_path, tiny):
    solid(Image, tmp_path / "x.png", (255, 0, 51))
    data = accuracy.load_data(tmp_path, tiny, image_spec='{"order": "bgr"}')
    assert data.labels is None  # images at the top level: no classes
    np.testing.assert_allclose(data.inputs["input"][0, :, 0, 0], [51 / 255, 0.0, 1.0], rtol=1e-6)


def test_nhwc_layout_and_size_come_from_the_model(Image, tmp_path):
    model = identity_model({"image": (FLOAT, ["n", 8, 6, 3])})
    solid(Image, tmp_path / "x.png", (255, 0, 51), size=(30, 30))
    data = accuracy.load_data(tmp_path, model)
    assert data.inputs["image"].shape == (1, 8, 6, 3)
    np.testing.assert_allclose(data.inputs["image"][0, 0, 0], [1.0, 0.0, 0.2], rtol=1e-6)


def test_digit_pngs_reproduce_the_npz_inputs_and_predictions(Image, tmp_path, digits):
    """Undo the eval set's normalization, write PNGs, read them back with the matching spec."""
    with np.load(DIGITS_EVAL) as archive:
        inputs, labels = archive["input"], archive["labels"]
    chosen = np.concatenate([np.flatnonzero(labels == digit)[:3] for digit in range(10)])
    for index in chosen:
        pixels = np.clip(np.rint((inputs[index, 0] * DIGITS_STD + DIGITS_MEAN) * 255), 0, 255).astype(np.uint8)
        folder = tmp_path / str(labels[index])
        folder.mkdir(exist_ok=True)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:03d}.png")
    data = accuracy.load_data(tmp_path, digits, image_spec={"mean": DIGITS_MEAN, "std": DIGITS_STD})
    np.testing.assert_array_equal(data.labels, labels[chosen])
    # 8-bit PNGs round each pixel to 1/255 of the [0, 1] range before normalization.
    np.testing.assert_allclose(data.inputs["input"], inputs[chosen], atol=0.5 / 255 / DIGITS_STD + 1e-6)
    from_images = accuracy.evaluate(digits, data, "top1")
    from_npz = accuracy.evaluate(digits, accuracy.Dataset({"input": inputs[chosen]}, labels[chosen]), "top1")
    assert from_images.value == from_npz.value and from_images.n == 30


def test_spec_from_a_json_file(Image, tmp_path, tiny):
    spec = tmp_path / "spec.json"
    spec.write_text('{"size": 8, "layout": "NCHW", "mean": 0.5, "std": 0.5}')
    solid(Image, tmp_path / "images" / "x.png", (255, 255, 255))
    model = identity_model({"x": (FLOAT, ["n", 3, "h", "w"])})  # dynamic size: the spec must give it
    data = accuracy.load_data(tmp_path / "images", model, image_spec=str(spec))
    assert data.inputs["x"].shape == (1, 3, 8, 8)
    np.testing.assert_allclose(data.inputs["x"], 1.0)


@pytest.mark.parametrize("spec, message", [
    ('{"size": [8, 8], "colour": "rgb"}',
     "image spec: unknown field colour; the fields are size, mean, std, order, layout"),
    ('{"order": "rgba"}', "image spec: order must be one of rgb, bgr, not 'rgba'"),
    ('{"mean": [0.1, 0.2]}', "image spec: mean has 2 values; give 1 or 3 (one per channel)"),
    ('{"std": 0}', "image spec: std must not be 0"),
    ('{"size": [8, 8]', "image spec is not valid JSON"),
    ("nope.json", "image spec 'nope.json' is neither a JSON object nor an existing .json file"),
])
def test_bad_specs(Image, spec, message, tmp_path, tiny):
    solid(Image, tmp_path / "x.png", (0, 0, 0))
    with pytest.raises(DataError) as error:
        accuracy.load_data(tmp_path, tiny, image_spec=spec)
    assert message in str(error.value)


def test_dynamic_size_without_a_spec_is_an_error(Image, tmp_path):
    solid(Image, tmp_path / "x.png", (0, 0, 0))
    model = identity_model({"x": (FLOAT, ["n", 3, "h", "w"])})
    with pytest.raises(DataError, match=r"dynamic height or width; give \"size\""):
        accuracy.load_data(tmp_path, model)


def test_empty_folder(tmp_path, tiny):
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    (tmp_path / "empty" / "README").write_text("no images here")
    with pytest.raises(DataError, match="empty: no images in it or in its sub-folders"):
        accuracy.load_data(tmp_path / "empty", tiny)


def test_unreadable_image_is_named(Image, tmp_path, tiny):
    solid(Image, tmp_path / "good.png", (0, 0, 0))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match=r"broken.png: cannot read as an image"):
        accuracy.load_data(tmp_path, tiny)


def test_images_both_at_top_level_and_in_class_folders(Image, tmp_path, tiny):
    solid(Image, tmp_path / "x.png", (0, 0, 0))
    solid(Image, tmp_path / "cat" / "y.png", (0, 0, 0))
    with pytest.raises(DataError, match="has images both at its top level and in sub-folders"):
        accuracy.load_data(tmp_path, tiny)


def test_missing_pillow_is_one_clear_line(tmp_path, tiny, monkeypatch):
    (tmp_path / "x.png").write_bytes(b"never read")
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `import PIL...` raise ImportError
    with pytest.raises(DataError, match=r"reading an image folder needs Pillow, an optional extra: "
                                        r"pip install 'onnx-tailor\[images\]'"):
        accuracy.load_data(tmp_path, tiny)


def test_image_spec_for_an_npz_is_refused(digits):
    with pytest.raises(DataError, match="an image spec applies to image folders only"):
        accuracy.load_data(DIGITS_EVAL, digits, image_spec='{"size": 32}')
