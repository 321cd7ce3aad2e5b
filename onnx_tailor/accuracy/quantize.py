"""`quantize_qdq`: the int8 model the device runs, made by onnxruntime's own static quantizer.

The simulated NPU computes in int8 (npu-target.md), so a model judged in
fp32 is judged on numbers the device never produces. `quantize_qdq` turns a
`Model` into its int8 form with `onnxruntime.quantization.quantize_static`,
calibrated on calibration inputs, so that the existing `Evaluator` can judge
what the device runs. The result is an ordinary `Model` in QDQ form: int8
weights behind DequantizeLinear, a QuantizeLinear -> DequantizeLinear pair on
every quantized activation; onnxruntime runs it in float between the pairs,
which reproduces the int8 rounding and clipping.

    split = accuracy.split_dataset(data, calibration=0.5, seed=0)
    int8 = accuracy.quantize_qdq(model, split.calibration.inputs)
    accuracy.evaluate(int8, split.evaluation, "top1")

The choices, and why (measured on digits_mbv2, 180 calibration / 180
evaluation samples, and the PaddleOCR text-direction classifier at 1x3x48x192,
200 / 200 rendered text lines from bench/text_lines.py; 2 shared CPU cores):

- QDQ format, int8 weights and int8 activations. QDQ is what NPU compilers
  import (each DequantizeLinear -> op -> QuantizeLinear group becomes one int8
  kernel, the grouping npu-target.md costs), and int8 for both is what the
  NPU computes in and the scheme of TFLite's int8 spec, which many NPU
  toolchains follow.
  Activations are asymmetric (a zero point), so that a tensor after a ReLU
  spends all 256 levels on [0, max]: symmetric activations lost 7.3 dB of
  SQNR against fp32 on digits (34.7 -> 27.4 dB) and 6.0 dB on paddle_cls
  (32.7 -> 26.7 dB). uint8 activations give the same numbers as int8 ones
  (the same 256 levels shifted); int8 is what the device holds.
- Weights symmetric (zero point 0) and per output channel: the usual NPU
  weight format, with no weight zero-point term in the int32 accumulation;
  per channel rather than per tensor gave 34.7 dB against 32.8 dB on
  digits. Biases become int32 at input scale times weight scale.
- MinMax calibration. It reduces every calibrated tensor to its min and max
  inside onnxruntime, one scalar each per run whatever the batch size, so
  its memory does not grow with the data, a short last batch is fine, and
  batches of 1, 7, 32 or all 180 samples give byte-identical models.
  Percentile (the 99.999th percentile of |x|, clipped to the observed min
  and max) keeps every activation of every calibration sample in memory
  (2.5 GB for paddle_cls's 200 lines) and took 2 to 4 times as long; it gave
  33.9 dB against MinMax's 34.7 on digits and 38.3 against 32.7 on
  paddle_cls, with top-1 the same within one sample either way (below).
  `method="percentile"` is there for a model whose outliers MinMax cannot
  live with. Entropy through `quantize_static` is not offered: it cannot be
  given more histogram bins than quantized bins (128 each), so it returns
  exactly MinMax's model (the same bytes, on both models) at Percentile's
  cost. Distribution is for float8.
- The op types are onnxruntime's defaults: Conv, ConvTranspose, Gemm,
  MatMul, Add, Mul, Concat, Softmax, pooling (MaxPool, AveragePool,
  GlobalAveragePool), shape ops (Reshape, Flatten, Transpose, Squeeze, ...),
  Relu/Clip and others. Ops outside that list (HardSigmoid, Div) run in float
  between a DequantizeLinear and the next QuantizeLinear, as a lookup table
  on the device would. A Relu or Clip right after a quantized op is folded
  into that op's output range (onnxruntime's default for asymmetric
  activations): the clamp happens in the requantization, as an NPU fuses it,
  with the same numbers (keeping the nodes gave the identical SQNR).
- No `quant_pre_process`. Its optimization step would put onnxruntime's
  own basic-level rewrite (fusions, constant folding) in place of the
  canonical graph, whose BatchNorms and constants are already folded; its
  symbolic shape inference needs sympy, which onnx-tailor does not depend
  on; and the onnx shape inference that `quantize_static` runs itself types
  every tensor of the canonical models. onnxruntime's note advising it is
  silenced with its other log lines.
- A model below opset 13 is converted to opset 13 first (onnx's version
  converter; node names survive): per-channel DequantizeLinear needs the
  `axis` attribute of opset 13, and onnxruntime's quantizer does not raise
  the opset itself (it writes an invalid model instead).

Measured (seconds per `quantize_qdq` call on this machine's 2 shared cores,
calibration runs included, which are most of it; MinMax unless said):
| model | fp32 top-1 | int8 top-1 | agreement | SQNR | s per call |
|---|---|---|---|---|---|
| digits (180 calibration samples) | 98.89 % | 98.89 % | 100 % | 34.7 dB | 1.0 (percentile 1.9) |
| paddle_cls (200 calibration lines) | 99.50 % | 99.00 % | 99.5 % | 32.7 dB | 1.9-2.5 (percentile 7-11) |
Judging the int8 model costs more than the fp32 one, since the Evaluator
runs it unoptimized, Q/DQ ops and all: 0.27 s against 0.24 s for digits'
180 evaluation samples, 0.58 s against 0.36 s for paddle_cls's 200.

Deterministic: the same model and calibration inputs give the same bytes,
so a recipe replays byte for byte (on the same onnxruntime version).
onnxruntime's quantizer works on files; here it gets a private temporary
folder that is removed afterwards. It is handed a file, never the caller's
proto: given a `ModelProto`, `quantize_static` rewrites that proto's weights
into references to external files in a folder it then deletes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import onnx
import onnxruntime.quantization as ortq
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType

from ..errors import QuantizationError
from ..ir import Model, batch_layout, session
from ..ir.batch import chunks
from ..ir.io import opset_of
from ..ir.shapes import infer_shapes
from ..ir.temporaries import scratch_folder
from .data import Dataset, _first_line, validate
from .evaluate import DEFAULT_BATCH_SIZE

METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
# DequantizeLinear takes a per-channel `axis` from opset 13 on.
QDQ_MIN_OPSET = 13
# Ops that compute on quantized activations: a model with any of them is already in the device's integer
# form (QDQ, QOperator or dynamic quantization), and quantizing it again would quantize the quantizer
# (onnxruntime then writes two nodes of one name and cannot load its own output).
QUANTIZED_ACTIVATION_OPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                                      "ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM"})


def is_quantized_model(model: Model) -> bool:
    """Whether `model` already computes on quantized activations (see `QUANTIZED_ACTIVATION_OPS`)."""
    return any(node.op_type in QUANTIZED_ACTIVATION_OPS for node in model.nodes)


def quantize_qdq(model: Model, calibration: Mapping[str, np.ndarray], *, method: str = "minmax",
                 batch_size: int = DEFAULT_BATCH_SIZE) -> Model:
    """`model` as the int8 device runs it: static QDQ quantization, int8 per-channel symmetric weights, int8
    asymmetric activations, calibrated on `calibration` (model input name -> array [N, ...]).

    `method` is "minmax" (the default) or "percentile"; see the module docstring for both and for every
    other choice. Calibration runs `batch_size` samples at a time (a model that fixes its batch size gets
    exactly that many, the last batch padded with copies of its last sample). "percentile" runs batches of
    one size that divides the sample count, at most `batch_size`: onnxruntime stacks the tensors of all runs
    and fails on a short last batch. The input model is not changed; node names survive; the result loads
    in onnxruntime. A model that is already quantized (`is_quantized_model`) is returned as it is: it is
    what the device runs.
    """
    if method not in METHODS:
        raise QuantizationError(f"unknown calibration method '{method}'; choose one of {', '.join(METHODS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    if not model.fits:  # it is handed the model as one file, which protobuf cannot write past 2 GiB
        raise QuantizationError("the model is past protobuf's 2 GiB limit, which this int8 quantization does not "
                                "take; judge and emit it in fp32 (--precision fp32, --emit fp32)")
    if is_quantized_model(model):
        return model
    data = validate(Dataset(calibration, description="calibration data"), model)
    layout = batch_layout(model)
    fixed = layout.fixed
    size = fixed or (batch_size if method == "minmax" else _even_batch_size(len(data), batch_size))
    source = _at_least_qdq_opset(model.proto)
    with scratch_folder("quantize") as folder:
        original, quantized = Path(folder) / "model.onnx", Path(folder) / "int8.onnx"
        original.write_bytes(source.SerializeToString(deterministic=True))
        try:
            with _quiet(), _temporaries_in(folder):
                ortq.quantize_static(
                    str(original), str(quantized), _Batches(layout.feeds(chunk) for _, chunk in chunks(data.inputs, size, pad=bool(fixed))),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=METHODS[method],
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        except Exception as exc:  # onnxruntime's quantizer raises ValueError, RuntimeError, its own errors
            raise QuantizationError(f"onnxruntime cannot quantize the model: {_first_line(exc)}") from exc
        proto = onnx.load(str(quantized))
    result = model.with_proto(infer_shapes(proto))
    try:
        sess = session(result)
    except Exception as exc:  # onnxruntime's own error types
        raise QuantizationError(f"onnxruntime quantized the model but cannot load the int8 model: "
                                f"{_first_line(exc)}") from exc
    # Loading is not running: on a weight-only int8 encoder the quantizer wrote a QuantizeLinear whose
    # scale onnxruntime refuses at run time. One calibration batch shows it here, as a quantization error.
    _, first = next(chunks(data.inputs, size, pad=bool(fixed)))
    try:
        sess.run(None, layout.feeds(first))
    except Exception as exc:  # onnxruntime's own error types
        raise QuantizationError(f"onnxruntime quantized the model but cannot run the int8 model: "
                                f"{_first_line(exc)}") from exc
    return result


def _even_batch_size(samples: int, most: int) -> int:
    """The largest batch size up to `most` that splits `samples` into equal batches."""
    return next(size for size in range(min(most, samples), 0, -1) if samples % size == 0)


class _Batches(CalibrationDataReader):
    """The calibration inputs, one feed dict per call, as onnxruntime's calibrators read them."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]):
        self._batches = batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _at_least_qdq_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    opset = opset_of(proto)
    if opset >= QDQ_MIN_OPSET:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, QDQ_MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError or its C++ errors
        raise QuantizationError(f"per-channel int8 needs opset {QDQ_MIN_OPSET}, and onnx cannot convert the "
                                f"model from opset {opset}: {_first_line(exc)}") from exc


_QUANTIZER_FOLDER = os.path.dirname(ortq.__file__) + os.sep


class _FromQuantizer(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(_QUANTIZER_FOLDER)


@contextlib.contextmanager
def _temporaries_in(folder: Path):
    """Python's temporaries made meanwhile go inside `folder`: onnxruntime's quantizer makes its own
    (`ort.quant.*`, holding a copy of the model) in the system temp dir, which a killed run would leave
    there; inside our scratch folder it is removed with it. The quantizer runs on one thread at a time."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved


@contextlib.contextmanager
def _quiet():
    """Silence onnxruntime's quantizer: its advice on the root logger and the histogram calibrators' prints.

    It logs with `logging.warning(...)`, which also installs a handler on the root logger when there is
    none; a placeholder handler prevents that, and a filter drops the quantizer's records only.
    """
    root = logging.getLogger()
    muted = _FromQuantizer()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder:
        root.addHandler(placeholder)
    root.addFilter(muted)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(muted)
        if placeholder:
            root.removeHandler(placeholder)

