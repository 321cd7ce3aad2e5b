"""Per-kernel features a hardware person would choose, and a tile-quantized roofline prior.

The prior is the roofline of a machine that computes in tiles of P channels
on a P x P MAC array (dense convs, matmuls) and V lanes on a vector unit
(depthwise convs, element-wise ops, pooling), the way any wide SIMD or
systolic machine does: max(tile work, all bytes touched / bandwidth) +
dispatch, where tile work is spatial x window x ceil(Ci/P) x ceil(Co/P) (or
ceil(C/V) on the vector unit). It knows nothing of which tensors stay on
chip, what fuses, or how efficient a real kernel is: the regressor learns
those from measurements, through features:
- the ideal (unquantized) work and the tile work, and their ratio to the prior;
- activation bytes read and written, weight bytes, and how large each
  tensor is relative to the on-chip memory (whether it can stay on chip);
- whether the kernel reads a graph input or writes a graph output;
- channels, kernel window, stride, and how many ops are fused in;
- whether the input and output channels are whole multiples of the vector
  width: a runtime that blocks channels by its vector width (onnxruntime's
  NCHWc layout) runs only those in its fast kernels (in the cpu-ort sweep a
  depthwise conv took a median 46 ps a MAC when its channels were a multiple
  of 8, 63 ps a multiple of 4 only, 486 ps otherwise). onnxruntime 1.32 takes
  any multiple of 4 into NCHWc (padded to its block of 16), yet reading
  multiples of 4 as aligned made held-out predictions worse (within 10% of
  the median ratio: 88-92% -> 68-76%, three idle truths): the trees tell the
  three classes apart better from this flag and the channel count. Nor did
  the fill of the last block help (output channels over output channels
  rounded up to 16, onnxruntime's NCHWc block here, where 12 -> 36 and
  12 -> 48 convs both take 40 us): against the same three idle truths the
  share within 10% went 60/60/76% -> 56/56/72%, within 10% of the median
  ratio 84/88/92% -> 84/80/84% (with the input channels' fill too,
  68/68/84%), though the digits family came 2-4 points closer; and flags
  for multiples of 4 beside those of 8 brought the digits model from +24%
  to -5% but the share within 10% of the median ratio down to 64/72/68%;
- the share of the window's taps that land inside the input rather than in
  its padding, which a CPU kernel skips: a 5x5 window over a map 2 or 3 rows
  high (text-line models) reads the input at only 40-60% of its taps;
- for a softmax, the elements after its axis and how many axes they span
  (none when the axis is the last): onnxruntime computes a softmax over
  another axis by transposing it last and back, 2 ns an element over axis 1
  of [1, 16, 8400], 9 ns of [1, 16, 4, 2100] (yolov8n's), 0.44 ns over the
  last axis of [196, 1000];
- how many activation tensors a kernel reads, and whether one of them is
  smaller than its output (a squeeze-excitation gate's Mul, [1,C,H,W] *
  [1,C,1,1]): the element-wise kinds share one regressor, and onnxruntime
  takes such a Mul out of its blocked layout and back (144 channels at 8x8:
  8.5 us in a sweep network, predicted 1.8 us without these, 5.3 with);
- for a nearest upsample, whether it copies whole pixels as exporters spell
  it (`repeats_pixels`): 0.16-0.28 ns an output element inside the PaddleOCR
  detector, against 0.9 for ONNX's default spelling in the sweep.
The target's profile supplies P, V, the clock, the memory sizes, bandwidth
and dispatch overhead, the way a datasheet would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..analysis import CONV_WEIGHT, node_macs, tensor_shape
from ..ir import Model
from ..ir.conv_geometry import ConvGeometry
from ..ir.io import opset_of
from .kernels import Kernel, kernels_for
from .target import Target

MAC_ARRAY_KINDS = ("conv", "grouped_conv", "matmul", "deconv", "recurrent", "control")
FEATURE_NAMES = ("log_prior", "fold_work_vs_prior", "traffic_vs_prior", "log_ideal_compute", "log_fold_work", "log_traffic", "log_macs", "log_in_bytes",
                 "log_out_bytes", "log_weight_bytes", "in_over_sram", "out_over_sram", "reads_graph_input",
                 "writes_graph_output", "log_in_channels", "log_out_channels", "window", "stride", "fused",
                 "in_aligned", "out_aligned", "valid_window", "log_softmax_inner",
                 "softmax_inner_axes", "repeats_pixels", "activation_inputs", "broadcast_input")


@dataclass(frozen=True)
class KernelRow:
    kernel: Kernel
    prior_s: float
    features: np.ndarray

    @property
    def kind(self) -> str:
        return self.kernel.kind


def _fold_work(model: Model, kernel: Kernel, node, info, target: Target, elements: int) -> float:
    """Work in units of the machine's width: the ceil(C/P) staircase made explicit."""
    P, V = target.parallelism, target.vector_lanes
    out = info.get(node.output[0])
    if kernel.kind in ("conv", "grouped_conv", "depthwise") and out is not None:
        weight = tensor_shape(model, node.input[CONV_WEIGHT[node.op_type]], info)
        groups = model.attr(node, "group", 1)
        spatial = out.shape[0] * math.prod(out.shape[2:]) * math.prod(weight[2:])
        if kernel.kind == "depthwise":
            return spatial * math.ceil(out.shape[1] / V)
        in_channels = weight[1] * groups
        return groups * spatial * math.ceil(in_channels / groups / P) * math.ceil(out.shape[1] / groups / P)
    if kernel.kind == "matmul" and out is not None and node.input[0] in info:
        a = info[node.input[0]].shape
        k = a[0] if node.op_type == "Gemm" and model.attr(node, "transA", 0) else a[-1]
        return math.prod(out.shape[:-1]) * math.ceil(k / P) * math.ceil(out.shape[-1] / P)
    return math.ceil(elements / V)


def _valid_taps(size: int, out: int, k: int, stride: int, dilation: int, pad: int) -> float:
    """The share of a window's taps along one axis that land inside the input, over every output position."""
    if out <= 0 or k <= 0:
        return 1.0
    inside = 0
    for tap in range(k):  # output positions o with 0 <= o * stride - pad + tap * dilation < size
        offset = pad - tap * dilation
        first, last = max(0, -(-offset // stride)), min(out - 1, (size - 1 + offset) // stride)
        inside += max(0, last - first + 1)
    return inside / (out * k)


def valid_window(model: Model, node, info) -> float:
    """The share of a conv's or pool's window taps that read the input rather than its padding (1 for other ops)."""
    source, out = info.get(node.input[0]), info.get(node.output[0])
    if node.op_type in CONV_WEIGHT:
        weight = tensor_shape(model, node.input[CONV_WEIGHT[node.op_type]], info)
        window = list(weight[2:]) if weight else []
    elif node.op_type in ("MaxPool", "AveragePool", "LpPool"):
        window = list(model.attr(node, "kernel_shape", []) or [])
    else:
        return 1.0
    if source is None or out is None or len(source.shape) != len(window) + 2 or len(out.shape) != len(source.shape):
        return 1.0
    geometry = ConvGeometry.of_window(node, tuple(window))
    begins = geometry.explicit_pads(tuple(source.shape[2:]))
    share = 1.0
    for axis in range(len(window)):
        share *= _valid_taps(source.shape[axis + 2], out.shape[axis + 2], window[axis], geometry.strides[axis],
                             geometry.dilations[axis], begins[axis])
    return share


SOFTMAX_OPS = ("Softmax", "LogSoftmax", "Hardmax")


def softmax_inner(model: Model, node, info) -> tuple[int, int]:
    """Elements after a softmax's axis, and how many axes they span ((0, 0) when the axis is the last, and
    for other ops). Before opset 13 a softmax flattened its input at the axis into rows, always contiguous."""
    source = info.get(node.input[0]) if node.op_type in SOFTMAX_OPS else None
    if source is None or not source.shape or opset_of(model.proto) < 13:
        return 0, 0
    axis = model.attr(node, "axis", -1)
    axis = axis + len(source.shape) if axis < 0 else axis
    if not 0 <= axis < len(source.shape) - 1:
        return 0, 0
    return math.prod(source.shape[axis + 1:]), len(source.shape) - 1 - axis


def repeats_pixels(model: Model, node) -> bool:
    """A nearest upsample whose output pixels copy input pixels floor(o / scale): Upsample, or Resize
    with asymmetric coordinates, as exporters write it (a runtime copies whole pixels; ONNX's default
    half_pixel spelling is computed per output pixel)."""
    if node.op_type == "Upsample":
        return model.attr(node, "mode", b"nearest") == b"nearest"
    return (node.op_type == "Resize" and model.attr(node, "mode", b"nearest") == b"nearest"
            and model.attr(node, "coordinate_transformation_mode", b"half_pixel") == b"asymmetric")


def kernel_rows(model: Model, target: Target) -> list[KernelRow]:
    """Features and prior of every executed (non-free) kernel of `model` on `target`."""
    kernels = kernels_for(model, target)
    return [kernel_row(model, kernel, target) for kernel in kernels if kernel.kind != "free"]


def kernel_row(model: Model, kernel: Kernel, target: Target, borders: Model | None = None) -> KernelRow:
    """Features and prior of one executed kernel of `model`: it reads only the kernel's own nodes and
    the shapes of their tensors, so a rewrite's change is scored by the kernels it removes and adds.
    `borders`: the model whose graph inputs and outputs count, when `model` is a region cut out of it."""
    info = model.tensor_info
    borders = borders or model
    element = target.element_bytes
    half_sram = max(target.sram_bytes / 2, 1)
    node = model.node(kernel.name)
    in_elems = [info[i].elements for i in kernel.inputs if i in info]
    out_elems = [info[o].elements for o in kernel.outputs if o in info]
    weight_elems = sum(math.prod(model.initializer(w).dims) for w in kernel.weights)
    in_bytes, out_bytes, weight_bytes = sum(in_elems) * element, sum(out_elems) * element, weight_elems * element
    macs = node_macs(model, node, info)
    elements = max(in_elems + out_elems, default=0)
    if kernel.kind in MAC_ARRAY_KINDS:
        ideal = macs / target.parallelism ** 2
    elif kernel.kind in ("memory", "gather"):
        ideal = out_bytes / target.dram_bytes_per_cycle
    else:
        ideal = elements / target.vector_lanes
    traffic = (in_bytes + out_bytes + weight_bytes) / target.dram_bytes_per_cycle
    fold_work = _fold_work(model, kernel, node, info, target, elements)
    if kernel.kind in ("memory", "gather"):
        fold_work = ideal  # data movement: no tiles, only bytes
    prior_cycles = max(fold_work, traffic) + target.dispatch_cycles
    in_ch = info[kernel.inputs[0]].shape[1] if kernel.inputs and kernel.inputs[0] in info \
        and len(info[kernel.inputs[0]].shape) > 1 else 0
    out_shape = info[node.output[0]].shape if node.output[0] in info else ()
    weight_shape = model.declared_shape(node.input[1]) if node.op_type == "Conv" else None
    inner, inner_axes = softmax_inner(model, node, info)
    features = np.array([
        math.log(prior_cycles), math.log1p(fold_work) - math.log(prior_cycles),
        math.log1p(traffic) - math.log(prior_cycles), math.log1p(ideal), math.log1p(fold_work),
        math.log1p(traffic), math.log1p(macs), math.log1p(in_bytes), math.log1p(out_bytes),
        math.log1p(weight_bytes),
        max((e * element for e in in_elems), default=0) / half_sram,
        max((e * element for e in out_elems), default=0) / half_sram,
        float(any(borders.is_graph_input(i) for i in kernel.inputs)),
        float(any(borders.is_graph_output(o) for o in kernel.outputs)),
        math.log1p(in_ch), math.log1p(out_shape[1] if len(out_shape) > 1 else 0),
        math.prod(weight_shape[2:]) if weight_shape else 1,
        max(model.attr(node, "strides", [1]) or [1]),
        len(kernel.fused),
        float(in_ch > 0 and in_ch % target.vector_lanes == 0),
        float(len(out_shape) > 1 and out_shape[1] % target.vector_lanes == 0),
        valid_window(model, node, info),
        math.log1p(inner), float(inner_axes), float(repeats_pixels(model, node)),
        float(len(in_elems)), float(bool(in_elems) and min(in_elems) < max(out_elems, default=0)),
    ], dtype=np.float64)
    return KernelRow(kernel, prior_cycles / target.clock_hz, features)
