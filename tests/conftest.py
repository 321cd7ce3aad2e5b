"""Shared fixtures: the bundled demo model and the third-party PaddleOCR models.

The PaddleOCR models ship inside the `rapidocr-onnxruntime` wheel on PyPI.
They are downloaded once into a cache outside the repository
(`$ONNX_TAILOR_CACHE`, default `~/.cache/onnx-tailor`) and never committed;
when PyPI cannot be reached, the tests that need them are skipped with a
message saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
RAPIDOCR = "rapidocr-onnxruntime==1.2.13"
PADDLE_FILES = {"paddle_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx", "paddle_det": "ch_PP-OCRv3_det_infer.onnx"}


@dataclass(frozen=True)
class ModelCase:
    """A model file and the input shapes its analysis and verification use."""

    name: str
    path: Path
    input_shapes: dict
    ibn_blocks: int  # how many inverted-bottleneck blocks it has (known from its architecture)


def _cache_dir() -> Path:
    return Path(os.environ.get("ONNX_TAILOR_CACHE", Path.home() / ".cache" / "onnx-tailor"))


def _fetch_paddle_models() -> dict[str, Path] | str:
    """Paths of the PaddleOCR models, downloading them once; an error message if that fails."""
    target = _cache_dir() / "rapidocr-1.2.13"
    paths = {key: target / name for key, name in PADDLE_FILES.items()}
    if all(p.exists() for p in paths.values()):
        return paths
    target.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
         "--disable-pip-version-check", "-q", RAPIDOCR, "-d", str(target)],
        capture_output=True, text=True, timeout=600,
    )
    wheels = sorted(target.glob("rapidocr_onnxruntime-*.whl"))
    if download.returncode != 0 or not wheels:
        return f"could not download {RAPIDOCR} from PyPI: {download.stderr.strip().splitlines()[-1:]}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        for key, name in PADDLE_FILES.items():
            partial = paths[key].with_suffix(".part")
            partial.write_bytes(wheel.read(f"rapidocr_onnxruntime/models/{name}"))
            partial.replace(paths[key])  # a killed download never leaves a half model behind
    return paths


@pytest.fixture(scope="session")
def paddle_models() -> dict[str, Path]:
    found = _fetch_paddle_models()
    if isinstance(found, str):
        pytest.skip(found)
    return found


DIGITS = ModelCase("digits", MODELS / "digits_mbv2.onnx", {}, ibn_blocks=9)
PADDLE_SHAPES = {"paddle_cls": ({"x": (1, 3, 48, 192)}, 11), "paddle_det": ({"x": (1, 3, 96, 96)}, 15)}


@pytest.fixture(params=["digits", "paddle_cls", "paddle_det"])
def model_case(request) -> ModelCase:
    """Every real model the project tests against: ours, and the two PaddleOCR ones."""
    if request.param == "digits":
        return DIGITS
    paths = request.getfixturevalue("paddle_models")
    shapes, blocks = PADDLE_SHAPES[request.param]
    return ModelCase(request.param, paths[request.param], shapes, blocks)
