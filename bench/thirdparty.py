"""Third-party models for tests and benchmarks, fetched from PyPI into a cache, never committed.

The PaddleOCR classifier and detector ship inside the `rapidocr-onnxruntime`
wheel. They are downloaded once into `$ONNX_TAILOR_CACHE` (default
`~/.cache/onnx-tailor`); callers get a message instead of paths when PyPI
cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

RAPIDOCR = "rapidocr-onnxruntime==1.2.13"
PADDLE_FILES = {"paddle_cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx", "paddle_det": "ch_PP-OCRv3_det_infer.onnx"}


def cache_dir() -> Path:
    return Path(os.environ.get("ONNX_TAILOR_CACHE", Path.home() / ".cache" / "onnx-tailor"))


def fetch_paddle_models() -> dict[str, Path] | str:
    """Paths of the PaddleOCR models, downloading them once; an error message if that fails."""
    target = cache_dir() / "rapidocr-1.2.13"
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
