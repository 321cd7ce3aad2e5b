"""Image folders as datasets: reading, resizing and normalizing images the way a model expects.

A folder either holds images directly (no labels) or holds one sub-folder per
class (labels: the sorted sub-folder names get 0..K-1, the convention of
torchvision's ImageFolder; name them so that sorting gives the model's class
order, e.g. `00`..`12` rather than `0`..`12`). Images are read with Pillow, an
optional extra (`pip install 'onnx-tailor[images]'`).

Each image goes through these steps, in this order (the `ImageSpec` fields):
1. converted to the model's channel count (1: grayscale, 3: colour, `order`
   rgb or bgr) and resized to `size` (height, width) with bilinear
   interpolation, ignoring the aspect ratio;
2. scaled to [0, 1] (pixel / 255);
3. normalized per channel: (x - mean) / std, with mean and std given in the
   channel order the model takes;
4. laid out as the model takes it (`layout` nchw or nhwc).

Defaults come from the model's input shape [N, C, H, W] or [N, H, W, C]:
size is its H and W, the layout is guessed from where a dimension of 1 or 3
sits, mean 0 and std 1 leave pixels in [0, 1].

A spec is written as JSON, inline or in a file:
    {"size": [224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
     "order": "rgb", "layout": "nchw"}
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import DataError
from ..ir import Model
from .data import Dataset

# An image larger than this is refused before it is decoded: a small file can declare a huge canvas
# (Pillow only warns, on stderr, below twice its own limit). 2**26 is 64 Mpixel, past any photo a model is fed.
IMAGE_PIXEL_LIMIT = 1 << 26
# The most the decoded, resized images of a folder may take together (float32).
BATCH_LIMIT = 4 << 30

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_ORDERS = ("rgb", "bgr")
_LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class ImageSpec:
    """How to turn image files into model input; None fields are taken from the model."""

    size: tuple[int, int] | None = None  # (height, width)
    mean: tuple[float, ...] = (0.0,)  # one value, or one per channel
    std: tuple[float, ...] = (1.0,)
    order: str = "rgb"
    layout: str | None = None

    def __post_init__(self):
        if self.size is not None and (len(self.size) != 2 or any(int(d) < 1 for d in self.size)):
            raise DataError(f"image spec: size must be [height, width] of positive integers, not {list(self.size)}")
        if self.order not in _ORDERS:
            raise DataError(f"image spec: order must be one of {', '.join(_ORDERS)}, not '{self.order}'")
        if self.layout is not None and self.layout not in _LAYOUTS:
            raise DataError(f"image spec: layout must be one of {', '.join(_LAYOUTS)}, not '{self.layout}'")
        if any(s == 0 for s in self.std):
            raise DataError("image spec: std must not be 0")


def parse_image_spec(spec: str | os.PathLike | Mapping) -> ImageSpec:
    """An `ImageSpec` from a JSON object (inline, or the path of a `.json` file) or a dict of its fields."""
    if isinstance(spec, Mapping):
        raw = dict(spec)
    else:
        source = str(spec)
        if not source.lstrip().startswith("{"):
            path = Path(source)
            if not path.is_file():
                raise DataError(f"image spec '{source}' is neither a JSON object nor an existing .json file")
            source = path.read_text()
        try:
            raw = json.loads(source)
        except json.JSONDecodeError as exc:
            raise DataError(f"image spec is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise DataError('image spec must be a JSON object, e.g. {"size": [224, 224], "mean": [0.5], "std": [0.5]}')
    known = [f.name for f in fields(ImageSpec)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise DataError(f"image spec: unknown field {', '.join(unknown)}; the fields are {', '.join(known)}")
    try:
        if isinstance(raw.get("size"), int):
            raw["size"] = [raw["size"], raw["size"]]
        for key in ("size", "mean", "std"):
            if key in raw:
                value = raw[key]
                values = value if isinstance(value, (list, tuple)) else [value]
                raw[key] = tuple((int if key == "size" else float)(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"image spec: {key} must be a number or a list of numbers, not {raw[key]!r}") from None
    for key in ("order", "layout"):
        if isinstance(raw.get(key), str):
            raw[key] = raw[key].lower()
    return ImageSpec(**raw)


def find_images(folder: Path) -> tuple[list[Path], list[int] | None, tuple[str, ...] | None]:
    """(image paths, labels or None, class names or None), in a stable sorted order."""
    def images_in(directory: Path) -> list[Path]:
        return sorted(p for p in directory.iterdir()
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))

    top = images_in(folder)
    class_dirs = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    per_class = [images_in(d) for d in class_dirs]
    if top and any(per_class):
        raise DataError(f"{folder}: has images both at its top level and in sub-folders; put them all in class "
                        f"sub-folders (for labels) or all at the top level (no labels)")
    if top:
        return top, None, None
    if not any(per_class):
        raise DataError(f"{folder}: no images in it or in its sub-folders (looked for "
                        f"{', '.join(IMAGE_SUFFIXES)})")
    # Every sub-folder counts as a class, empty or not, so that one empty folder
    # does not shift the indices of the classes after it.
    paths = [p for images in per_class for p in images]
    labels = [index for index, images in enumerate(per_class) for _ in images]
    return paths, labels, tuple(d.name for d in class_dirs)


def _geometry(model: Model, name: str, spec: ImageSpec) -> tuple[str, int, tuple[int, int]]:
    """(layout, channels, (height, width)) for the model's input `name`, spec first."""
    declared = model.declared_shape(name)
    if declared is None or len(declared) != 4:
        shown = "unknown" if declared is None else f"rank {len(declared)}"
        raise DataError(f"image folders feed 4-D image inputs [N,C,H,W] or [N,H,W,C]; input '{name}' has {shown} shape")
    dims = [d if isinstance(d, int) and d > 0 else None for d in declared[1:]]
    layout = spec.layout
    if layout is None:
        if dims[0] in (1, 3):
            layout = "nchw"
        elif dims[2] in (1, 3):
            layout = "nhwc"
        else:
            raise DataError(f"cannot tell whether input '{name}' [{','.join(str(d or '?') for d in declared)}] is "
                            f"NCHW or NHWC; give \"layout\" in the image spec")
    channels, height, width = (dims[0], dims[1], dims[2]) if layout == "nchw" else (dims[2], dims[0], dims[1])
    channels = channels or 3
    if channels not in (1, 3):
        raise DataError(f"input '{name}' takes {channels} channels; image folders give 1 (grayscale) or 3 (colour)")
    size = spec.size or ((height, width) if height and width else None)
    if size is None:
        raise DataError(f"input '{name}' has a dynamic height or width; "
                        f"give \"size\": [height, width] in the image spec")
    return layout, channels, (int(size[0]), int(size[1]))


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> np.ndarray:
    if len(values) not in (1, channels):
        raise DataError(f"image spec: {what} has {len(values)} values; give 1 or {channels} (one per channel)")
    return np.asarray(values if len(values) == channels else values * channels, dtype=np.float32)


def load_image_folder(folder: str | os.PathLike, model: Model,
                      spec: ImageSpec | Mapping | str | None = None) -> Dataset:
    """Every image in `folder` (labelled by class sub-folder, if any), preprocessed for `model`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    if spec is None:
        spec = ImageSpec()
    elif not isinstance(spec, ImageSpec):
        spec = parse_image_spec(spec)
    if len(model.graph_inputs) != 1:
        raise DataError(f"image folders feed models with one input; this one has {len(model.graph_inputs)}; "
                        f"use an .npz keyed by input name")
    name = model.graph_inputs[0].name
    layout, channels, (height, width) = _geometry(model, name, spec)
    mean = _per_channel(spec.mean, channels, "mean")
    std = _per_channel(spec.std, channels, "std")
    paths, labels, classes = find_images(folder)  # before Pillow: an empty folder needs no image library
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError("reading an image folder needs Pillow, an optional extra: "
                        "pip install 'onnx-tailor[images]'") from None

    size = len(paths) * height * width * channels * 4
    if size > BATCH_LIMIT:  # checked before numpy is asked for it
        raise DataError(f"{folder}: {len(paths)} images of {height}x{width}x{channels} take {size / (1 << 30):.1f} GiB "
                        f"as float32, over the {BATCH_LIMIT >> 30} GiB onnx-tailor reads at once; use a smaller "
                        "\"size\" in the image spec or fewer images")
    batch = np.empty((len(paths), height, width, channels), dtype=np.float32)
    for index, path in enumerate(paths):
        try:
            with warnings.catch_warnings():  # the size is checked below, and said in one line
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(path)
            with image:  # open read the header only: the pixel count is known before decoding
                if image.width * image.height > IMAGE_PIXEL_LIMIT:
                    raise DataError(f"{path}: {image.width}x{image.height} pixels, more than the "
                                    f"{IMAGE_PIXEL_LIMIT:,} onnx-tailor decodes (a decompression bomb?)")
                image = image.convert("L" if channels == 1 else "RGB")
                image = image.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: cannot read as an image: {exc}") from None
        batch[index] = pixels.reshape(height, width, channels)
    if spec.order == "bgr":
        batch = batch[..., ::-1]
    batch = (batch / 255.0 - mean) / std
    if layout == "nchw":
        batch = batch.transpose(0, 3, 1, 2)
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    return Dataset({name: batch}, None if labels is None else np.asarray(labels, dtype=np.int64),
                   str(folder), classes)
