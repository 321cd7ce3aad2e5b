"""Labelled data for the PaddleOCR text-direction classifier: rendered text, half turned 180 degrees.

Lines of random words are drawn with PIL in DejaVu Sans (Debian's
fonts-dejavu-core) at seeded sizes, offsets and shades, half of them rotated
by 180 degrees (label 1, the classifier's '180'), and preprocessed exactly
as rapidocr feeds its classifier: height 48 keeping the aspect ratio, width
capped at 192 and zero-padded to it, (x / 255 - 0.5) / 0.5, CHW.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

FONT_PATHS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
WORDS = ("onnx", "tailor", "model", "latency", "accelerator", "fused", "block", "channel", "tensor", "kernel",
         "invoice", "total", "date", "name", "address", "street", "2026", "No.", "12.50", "receipt", "OCR",
         "Paddle", "Hello", "World", "text", "line", "page", "price", "qty", "item", "code", "ID", "phone")


def available() -> str | None:
    """None when text can be rendered, else why not."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        return "Pillow is not installed (pip install 'onnx-tailor[images]')"
    missing = [p for p in FONT_PATHS if not Path(p).exists()]
    return f"font {missing[0]} is missing (apt-get install fonts-dejavu-core)" if missing else None


def _render(rng: random.Random):
    from PIL import Image, ImageDraw, ImageFont

    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
    font = ImageFont.truetype(rng.choice(FONT_PATHS), rng.randint(22, 36))
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = rng.randint(2, 12), rng.randint(2, 8)
    background = rng.randint(200, 255)
    image = Image.new("RGB", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), (background,) * 3)
    ink = rng.randint(0, 70)
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=font, fill=(ink,) * 3)
    return image


def _preprocess(image) -> np.ndarray:
    from PIL import Image

    height, width = 48, 192
    resized_w = min(width, int(math.ceil(height * image.width / image.height)))
    array = np.asarray(image.resize((resized_w, height), Image.BILINEAR), dtype=np.float32)
    array = (array.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = array
    return out


def text_line_dataset(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [n, 3, 48, 192], labels [n]): label 1 for lines rotated by 180 degrees."""
    rng = random.Random(seed)
    inputs, labels = [], []
    for index in range(n):
        image = _render(rng)
        flipped = index % 2 == 1
        if flipped:
            image = image.rotate(180)
        inputs.append(_preprocess(image))
        labels.append(int(flipped))
    return np.stack(inputs), np.array(labels, dtype=np.int64)


def write_npz(path: Path, n: int = 400, seed: int = 0) -> Path:
    inputs, labels = text_line_dataset(n, seed)
    np.savez(path, x=inputs, labels=labels)
    return path
