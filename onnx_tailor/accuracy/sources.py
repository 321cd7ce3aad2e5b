"""`load_data`: one entry point over the three sources of data (an `.npz` file, an image folder, `random`).

The sources live in `data.py` (`.npz`, random) and `images.py` (image folders,
which build `data.Dataset`s); this module picks one by what `source` names,
so neither of them imports the other.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from ..ir import Model
from .data import DEFAULT_RANDOM_SAMPLES, Dataset, load_npz, random_dataset, validate
from .images import load_image_folder

RANDOM = "random"


def load_data(source: str | os.PathLike, model: Model, *, image_spec=None,
              samples: int = DEFAULT_RANDOM_SAMPLES, seed: int = 0) -> Dataset:
    """A dataset for `model` from an `.npz` path, an image folder, or `random`, validated.

    `image_spec` (an `images.ImageSpec`, a dict of its fields, or JSON text or file) applies to
    image folders only; `samples` and `seed` to `random` only.
    """
    path = Path(source)
    if image_spec is not None and not path.is_dir():
        raise DataError(f"{source}: an image spec applies to image folders only")
    if str(source) == RANDOM:
        dataset = random_dataset(model, samples, seed)
    elif path.is_dir():
        dataset = load_image_folder(path, model, image_spec)
    elif path.exists():
        dataset = load_npz(path)
    else:
        raise DataError(f"{source}: no such file or folder (data is an .npz file, a folder of images, or '{RANDOM}')")
    return validate(dataset, model)
