"""The op sweep: small ONNX microbenchmarks over the shapes that matter.

Each entry is one kernel as a runtime executes it (a Conv with its fused
activation, a depthwise Conv, a MatMul, a ConvTranspose, an element-wise op,
a pool, a data movement op, an embedding look-up). Its id spells its configuration, e.g.
`conv:act=relu6,ci=24,co=40,ctx=1,hw=56,k=3,s=2`, so measurements taken
elsewhere (a CSV of `id,latency_s`) can be matched back to shapes without
any other file. `ctx=1` puts the op between two Neg ops, so that its input
and output are intermediate tensors (on chip when small), as inside a
network; `ctx=0` reads a graph input and writes a graph output.

A measured target times each kernel inside a small network
(`SweepEntry.network`): the op between the neighbours it has in a
MobileNet-like model, 1x1 convolutions around the ops that a runtime keeps in
its blocked conv layout (convs, pools, data movement, the residual Add and the
excitation Mul), Neg ops around the rest. Every context node's name starts
with `CONTEXT_PREFIX`, so that a profile of the network tells the kernel's
own nodes from its neighbours' (`costmodel.profiler`).

Shapes are drawn with a fixed seed the way MobileNet-like networks use them:
channels from 8 to 1280, half of them not multiples of 8, wider at low
resolution; kernels 1/3/5, strides 1/2, resolutions 7 to 224. Rules add
what the square base sweep never shows, each with its own seed so that the
base entries stay as they were:
- text-line maps (`flat_entries`): 1 to 24 rows high, 2 to 64 times as wide
  (up to 320), as OCR recognizers and classifiers run; `w=` in an id is the
  width when it differs from `hw`. There a 5x5 window reads mostly padding.
- activations spelled out in several ops (`spelled_activation_entries`):
  HardSwish as Add/Clip/Mul(/Div), swish as x * Sigmoid(x), between convs,
  for targets that run them as one kernel (`Target.grouped_activations`);
  and convs with a HardSwish after them (`hardswish_entries`), which a
  runtime may fuse at a cost of its own;
- the smallest maps (`small_map_entries`): 1 to 6 pixels square, the last
  stages of small-input models and every excitation gate's 1x1 convs;
- softmax over a middle axis (`softmax_axis_entries`), which onnxruntime
  transposes last and back (a detector's distribution head);
- nearest upsampling spelled as exporters write it (`exported_resize_entries`),
  by 2, 4 or 8, which onnxruntime copies by whole pixels;
- squeeze-excitation gates' pool and Mul (`excitation_entries`) on the
  2-28 pixel maps where models put them.
Given models add entries around their own kernels (their exact shapes and
neighbouring channel counts), nn-Meter's adaptive sampling in its simplest
form; no rule above names a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import TailorError
from ..ir import Model
from .kernels import group_kernels

OPSET = 17
RESOLUTIONS = (7, 10, 14, 20, 28, 40, 56, 80, 112, 160, 224)
MAX_MACS = 150_000_000  # keeps every microbenchmark under ~50 ms on one CPU core
ACTIVATIONS = ("none", "relu", "relu6")
ELEMENTWISE_OPS = ("add", "mul", "scale", "relu", "relu6", "sigmoid", "hardsigmoid", "hardswish")
POOL_OPS = ("gap", "maxpool", "avgpool")
MEMORY_OPS = ("concat", "resize", "transpose", "slice")
# A nearest upsample as PyTorch and Paddle export it; the base sweep's Resize takes ONNX's defaults (half_pixel,
# round_prefer_floor), which no exporter writes for it and onnxruntime runs 3-5x slower (`exported_resize_entries`).
EXPORTED_NEAREST = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
CONTEXT_PREFIX = "ctx_"
# Entries whose neighbours in a network are convolutions (onnxruntime keeps them in its blocked NCHWc
# layout there: measured between Neg ops they would pay layout reorders that no network pays).
_CONV_NEIGHBOURS = {"conv", "depthwise", "deconv", "pool", "memory"}
# Activations spelled out in several ops (`SPELLED_ACTIVATIONS`) sit between convs too: a runtime that
# runs them as one kernel (`Target.grouped_activations`) is timed with the reorders they cost there.
# (x * HardSigmoid(x) is left out: onnxruntime fuses it into the conv before it, as it does a HardSwish op.)
SPELLED_ACTIVATIONS = ("hardswish_ops", "hardswish_ops3", "swish_ops")
_CONV_NEIGHBOUR_ELTWISE = {"add", "mul", "scale", *SPELLED_ACTIVATIONS}


@dataclass(frozen=True)
class SweepEntry:
    op: str  # conv, depthwise, matmul, eltwise, pool, memory, softmax, gather
    params: tuple[tuple[str, int | str], ...]

    @property
    def id(self) -> str:
        return f"{self.op}:" + ",".join(f"{k}={v}" for k, v in self.params)

    @property
    def p(self) -> dict:
        return dict(self.params)

    @classmethod
    def make(cls, op: str, **params) -> "SweepEntry":
        return cls(op, tuple(sorted(params.items())))

    @classmethod
    def from_id(cls, entry_id: str) -> "SweepEntry":
        op, sep, rest = entry_id.partition(":")
        if not sep or op not in _BUILDERS:
            raise ValueError(f"not a sweep id: {entry_id!r}")
        params = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"not a sweep id: {entry_id!r}")
            params[key] = int(value) if value.lstrip("-").isdigit() else value
        return cls.make(op, **params)

    def build(self) -> onnx.ModelProto:
        """The microbenchmark: one kernel, named `op`, with seeded weights."""
        return _BUILDERS[self.op](self.p, np.random.default_rng(_seed(self.id)))

    def model(self) -> Model:
        return Model(self.build())  # shapes are inferred when first needed (Model.tensor_info)

    @property
    def in_context(self) -> "SweepEntry":
        """The same kernel between neighbours (`ctx=1`): the id an in-network measurement is filed under."""
        return SweepEntry.make(self.op, **{**self.p, "ctx": 1})

    def network(self) -> onnx.ModelProto:
        """The kernel inside a small network, for profiling: the op between the neighbours it has in a
        model, every neighbour named with `CONTEXT_PREFIX` (see the module docstring)."""
        convs = self.op in _CONV_NEIGHBOURS or (self.op == "eltwise" and self.p["kind"] in _CONV_NEIGHBOUR_ELTWISE)
        return _BUILDERS[self.op]({**self.p, "ctx": NETWORK_CONV if convs else NETWORK_NEG},
                                  np.random.default_rng(_seed(self.id)))


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


# -- building microbenchmarks -----------------------------------------------------------


# `ctx` values that only `SweepEntry.network` passes to the builders (never part of an id).
NETWORK_CONV, NETWORK_NEG = "network_conv", "network_neg"


class GraphBuilder:
    """An ONNX graph built node by node from seeded random weights: a sweep entry's network, or a training
    network (`costmodel.netfactor`)."""

    def __init__(self, rng):
        self.rng, self.nodes, self.inits, self.count = rng, [], [], 0

    def mark(self) -> tuple[int, int, int]:
        """Where the graph stands now, for `rewind`."""
        return self.count, len(self.nodes), len(self.inits)

    def rewind(self, mark: tuple[int, int, int]) -> None:
        """Drop what was added since `mark`, names included."""
        self.count, nodes, inits = mark
        del self.nodes[nodes:], self.inits[inits:]

    def const(self, value) -> str:
        self.count += 1
        name = f"w{self.count}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, *shape) -> str:
        return self.const((self.rng.standard_normal(shape) * 0.1).astype(np.float32))

    def add(self, op, inputs, name=None, out=None, **attrs) -> str:
        self.count += 1
        out = out or f"t{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name or f"n{self.count}", **attrs))
        return out

    def activation(self, x: str, kind: str) -> str:
        if kind == "relu":
            return self.add("Relu", [x])
        if kind == "relu6":
            return self.add("Clip", [x, self.const(np.float32(0)), self.const(np.float32(6))])
        if kind == "hardswish":  # x * HardSigmoid(x): how canonicalization spells a HardSwish op
            return self.add("Mul", [x, self.add("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])
        return x

    def neighbour(self, x: str, channels: int | None, name: str) -> str:
        """A context node: a 1x1 conv over `channels` (a network's usual neighbour), or a Neg without them.
        Its output is named like the node: onnxruntime names a node it moves to the blocked layout after
        the node's output."""
        if channels is None:
            return self.add("Neg", [x], name=name, out=name)
        return self.add("Conv", [x, self.weight(channels, channels, 1, 1)], name=name, out=name)

    def finish(self, inputs: dict[str, list[int]], body, ctx: int | bool) -> onnx.ModelProto:
        if ctx in (NETWORK_CONV, NETWORK_NEG):
            return self._network(inputs, body, conv=ctx == NETWORK_CONV)
        feeds = {name: self.add("Neg", [name], name="pre_" + name) if ctx else name for name in inputs}
        out = body(feeds)
        if ctx:
            out = self.add("Neg", [out], name="post")
        return self.model_proto(inputs, out)

    def _network(self, inputs: dict[str, list[int]], body, conv: bool) -> onnx.ModelProto:
        def channels(shape):
            return shape[1] if conv and len(shape) == 4 else None
        feeds = {name: self.neighbour(name, channels(shape), CONTEXT_PREFIX + "pre_" + name)
                 for name, shape in inputs.items()}
        out = body(feeds)
        inferred = onnx.shape_inference.infer_shapes(self.model_proto(inputs, out))  # the op's output channels
        shape = [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
        return self.model_proto(inputs, self.neighbour(out, channels(shape), CONTEXT_PREFIX + "post"))

    def model_proto(self, inputs: dict[str, list[int]], out: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "sweep", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        return model


def _conv(p, rng, depthwise=False):
    g = GraphBuilder(rng)
    ci = p["c"] if depthwise else p["ci"]
    co = ci if depthwise else p["co"]
    k, s = p["k"], p["s"]

    def body(x):
        y = g.add("Conv", [x["x"], g.weight(co, 1 if depthwise else ci, k, k), g.weight(co)], name="op",
                  kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4, group=ci if depthwise else 1)
        return g.activation(y, p["act"])
    return g.finish({"x": [1, ci, *_size(p)]}, body, p["ctx"])


def _size(p) -> list[int]:
    """Height and width of an entry's input map: `hw` square, or `hw` high and `w` wide."""
    return [p["hw"], p.get("w", p["hw"])]


def _deconv(p, rng):
    """ConvTranspose k=s (the upsampling of detector necks)."""
    g = GraphBuilder(rng)
    ci, co, k = p["ci"], p["co"], p["k"]
    return g.finish({"x": [1, ci, p["hw"], p["hw"]]},
                    lambda x: g.add("ConvTranspose", [x["x"], g.weight(ci, co, k, k), g.weight(co)], name="op",
                                    kernel_shape=[k, k], strides=[k, k]), p["ctx"])


def _matmul(p, rng):
    g = GraphBuilder(rng)
    return g.finish({"x": [p["m"], p["k"]]},
                    lambda x: g.add("Gemm", [x["x"], g.weight(p["k"], p["n"]), g.weight(p["n"])], name="op"),
                    p["ctx"])


def _eltwise(p, rng):
    g = GraphBuilder(rng)
    c, kind = p["c"], p["kind"]
    shape = [1, c, *_size(p)]
    inputs = {"x": shape, "y": shape} if kind in ("add", "mul") else {"x": shape}
    if kind == "scale":  # the Mul of a squeeze-excitation gate: [1,C,H,W] * [1,C,1,1]
        inputs["y"] = [1, c, 1, 1]

    def body(x):
        if kind in SPELLED_ACTIVATIONS:
            return _spelled_activation(g, x["x"], kind)
        if kind in ("add", "mul", "scale"):
            return g.add({"add": "Add", "mul": "Mul", "scale": "Mul"}[kind], [x["x"], x["y"]], name="op")
        if kind == "relu6":
            return g.add("Clip", [x["x"], g.const(np.float32(0)), g.const(np.float32(6))], name="op")
        if kind == "hardsigmoid":
            return g.add("HardSigmoid", [x["x"]], name="op", alpha=0.2, beta=0.5)
        return g.add({"relu": "Relu", "sigmoid": "Sigmoid", "hardswish": "HardSwish"}[kind], [x["x"]], name="op")
    return g.finish(inputs, body, p["ctx"])


def _spelled_activation(g: GraphBuilder, x: str, kind: str) -> str:
    """HardSwish as Add(3) -> Clip(0, 6) -> Mul(x) [-> Div(6)]; swish as x * Sigmoid(x).
    The first op is named `op`: it anchors the kernel."""
    if kind == "swish_ops":
        return g.add("Mul", [x, g.add("Sigmoid", [x], name="op")])
    shifted = g.add("Add", [x, g.const(np.float32(3))], name="op")
    gated = g.add("Mul", [x, g.add("Clip", [shifted, g.const(np.float32(0)), g.const(np.float32(6))])])
    return g.add("Div", [gated, g.const(np.float32(6))]) if kind == "hardswish_ops" else gated


def _pool(p, rng):
    g = GraphBuilder(rng)
    kind = p["kind"]

    def body(x):
        if kind == "gap":
            return g.add("GlobalAveragePool", [x["x"]], name="op")
        op = "MaxPool" if kind == "maxpool" else "AveragePool"
        return g.add(op, [x["x"]], name="op", kernel_shape=[2, 2], strides=[2, 2])
    return g.finish({"x": [1, p["c"], *_size(p)]}, body, p["ctx"])


def _memory(p, rng):
    g = GraphBuilder(rng)
    c, kind = p["c"], p["kind"]
    shape = [1, c, *_size(p)]
    inputs = {"x": shape, "y": shape} if kind == "concat" else {"x": shape}

    def body(x):
        if kind == "concat":
            return g.add("Concat", [x["x"], x["y"]], name="op", axis=1)
        if kind == "resize":  # nearest, by `scale` (2 unless the id says); spelled as exporters do with `coord`
            scale = p.get("scale", 2)
            spelling = EXPORTED_NEAREST if p.get("coord") == "asymmetric" else {}
            return g.add("Resize", [x["x"], "", g.const(np.array([1, 1, scale, scale], np.float32))], name="op",
                         mode="nearest", **spelling)
        if kind == "transpose":
            return g.add("Transpose", [x["x"]], name="op", perm=[0, 2, 3, 1])
        return g.add("Slice", [x["x"], g.const(np.array([0])), g.const(np.array([max(c // 2, 1)])),
                               g.const(np.array([1]))], name="op")
    return g.finish(inputs, body, p["ctx"])


def _softmax(p, rng):
    """Softmax over the last axis of [m, n]; with `inner`, over the middle axis of [m, n, inner]; with `hw`,
    over axis 1 of [m, n, hw, w] (a detector's distribution head: yolov8n's DFL takes it over axis 1 of
    [1, 16, 4, anchors])."""
    g = GraphBuilder(rng)
    if "hw" in p:
        shape, axis = [p["m"], p["n"], p["hw"], p["w"]], 1
    else:
        shape, axis = ([p["m"], p["n"], p["inner"]], 1) if "inner" in p else ([p["m"], p["n"]], -1)
    return g.finish({"x": shape}, lambda x: g.add("Softmax", [x["x"]], name="op", axis=axis), p["ctx"])


def _gather(p, rng):
    g = GraphBuilder(rng)
    table = g.weight(p["rows"], p["dim"])
    indices = g.const((np.arange(p["n"]) % p["rows"]).astype(np.int64))

    def body(x):  # the looked-up rows are added to the input so the kernel has an activation to read
        return g.add("Add", [g.add("Gather", [table, indices], name="op"), x["x"]])
    return g.finish({"x": [p["n"], p["dim"]]}, body, p["ctx"])


_BUILDERS = {
    "conv": _conv, "depthwise": lambda p, rng: _conv(p, rng, depthwise=True), "matmul": _matmul, "deconv": _deconv,
    "eltwise": _eltwise, "pool": _pool, "memory": _memory, "softmax": _softmax, "gather": _gather,
}


# The trivial model whose whole run is the per-run overhead (one element through one Relu).
OVERHEAD_ENTRY = SweepEntry.make("eltwise", c=1, hw=1, kind="relu", ctx=0)
CALIBRATION_NODES = 64  # how many nodes longer the long calibration chain is than the short one


def calibration_chain(nodes: int) -> onnx.ModelProto:
    """`nodes` Neg ops in a row on 64 floats: the profiler's per-node cost is measured on two of these
    (`profiler.profiler_bias_s`)."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x" if i == 0 else f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(nodes)],
        "calibration", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info(f"t{nodes}", TensorProto.FLOAT, [1, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


# -- choosing the entries ---------------------------------------------------------------


def _channels(rng, hw: int) -> int:
    """Log-uniform in [8, cap(hw)], half of the draws snapped to a multiple of 8."""
    cap = min(1280, max(32, int(1280 * 7 / hw)))
    value = int(round(math.exp(rng.uniform(math.log(8), math.log(cap)))))
    return max(8, value - value % 8) if rng.random() < 0.5 else max(3, value)


def _within_max_macs(ci: int, co: int, macs_per_pair: int, divisor: int = 1) -> tuple[int, int]:
    """Input and output channels, both halved (down to 3) until ci * co * macs_per_pair // divisor MACs fit
    under MAX_MACS. The sweeps count a conv's MACs slightly differently (the base sweep from the strided side,
    (hw // s) ** 2, the others as h * w // s ** 2): kept as they were, so that the seeded entries, and the
    measurements shipped for them, stay the same."""
    while ci * co * macs_per_pair // divisor > MAX_MACS:
        ci, co = max(3, ci // 2), max(3, co // 2)
    return ci, co


def _depthwise_channels(rng, hw: int) -> int:
    """A depthwise conv's channels: an expansion's, `_channels` times 0.5, 1.5 or 3 (at least 8)."""
    return _channels(rng, hw) * int(rng.choice((1, 3, 6))) // 2 or 8


def base_entries(seed: int = 0, size: int = 600, contexts: tuple[int, ...] = (1, 0)) -> list[SweepEntry]:
    """The seeded base sweep; `size` scales the number of entries (about `size` per context)."""
    rng = np.random.default_rng(seed)
    plan = {"conv": 0.45, "depthwise": 0.2, "matmul": 0.08, "eltwise": 0.12, "pool": 0.05, "memory": 0.06,
            "deconv": 0.04, "softmax": 0.02, "gather": 0.02}
    entries = []
    for op, share in plan.items():
        for _ in range(max(4, int(size * share))):
            hw = int(rng.choice(RESOLUTIONS))
            if op == "conv":
                k, s = int(rng.choice((1, 1, 3, 5))), int(rng.choice((1, 1, 2)))
                ci, co = _channels(rng, hw), _channels(rng, hw)
                ci, co = _within_max_macs(ci, co, k * k * (hw // s) ** 2)
                params = dict(ci=ci, co=co, k=k, s=s, hw=hw, act=str(rng.choice(ACTIVATIONS)))
            elif op == "depthwise":
                params = dict(c=_depthwise_channels(rng, hw), k=int(rng.choice((3, 5))),
                              s=int(rng.choice((1, 2))), hw=hw, act=str(rng.choice(ACTIVATIONS)))
            elif op == "deconv":
                hw = min(hw, 80)
                params = dict(ci=_channels(rng, hw * 2), co=_channels(rng, hw * 2), k=2, hw=hw)
            elif op == "matmul":
                params = dict(m=int(rng.choice((1, 4, 16, 64, 196))), k=_channels(rng, 7), n=_channels(rng, 7))
            elif op == "eltwise":
                params = dict(c=_channels(rng, hw), hw=hw, kind=str(rng.choice(ELEMENTWISE_OPS)))
            elif op == "pool":
                params = dict(c=_channels(rng, hw), hw=hw, kind=str(rng.choice(POOL_OPS)))
            elif op == "memory":
                params = dict(c=_channels(rng, hw), hw=hw, kind=str(rng.choice(MEMORY_OPS)))
            elif op == "softmax":
                params = dict(m=int(rng.choice((1, 16, 196))), n=int(rng.choice((2, 10, 100, 1000))))
            else:
                params = dict(rows=int(rng.choice((1000, 5000, 30000))), dim=int(rng.choice((64, 128, 300))),
                              n=int(rng.choice((16, 64, 256))))
            for ctx in contexts:
                entries.append(SweepEntry.make(op, ctx=ctx, **params))
    return list(dict.fromkeys(entries))


def entries_from_models(models: Iterable[Model], contexts: tuple[int, ...] = (1, 0)) -> list[SweepEntry]:
    """Entries at the kernels of `models` and at neighbouring channel counts (+-1, +-8)."""
    found = []
    for model in models:
        info = model.tensor_info
        for kernel in group_kernels(model, ("relu", "relu6", "clip")):
            node = model.node(kernel.name)
            if kernel.kind not in ("conv", "depthwise") or node.input[0] not in info:
                continue
            shape = info[node.input[0]].shape
            if len(shape) != 4 or shape[2] != shape[3]:
                continue  # the sweep is square; non-square kernels are covered by their neighbours
            weight = model.declared_shape(node.input[1])
            k, s = weight[2], model.attr(node, "strides", [1, 1])[0]
            act = "relu6" if kernel.fused else "none"
            for delta in (0, -1, 1, -8, 8):
                for ctx in contexts:
                    if kernel.kind == "depthwise":
                        found.append(SweepEntry.make("depthwise", c=max(3, shape[1] + delta), k=k, s=s, hw=shape[2],
                                                     act=act, ctx=ctx))
                    else:
                        found.append(SweepEntry.make("conv", ci=shape[1], co=max(3, weight[0] + delta), k=k, s=s,
                                                     hw=shape[2], act=act, ctx=ctx))
    return list(dict.fromkeys(found))


# Text-line maps: a few rows high, many times as wide (OCR recognizers and classifiers, 32-48 pixels high).
FLAT_HEIGHTS = (1, 2, 3, 4, 6, 8, 12, 16, 24)
FLAT_MAX_ASPECT, FLAT_MAX_WIDTH = 64, 320


def _flat_map(rng) -> tuple[int, int, int]:
    """A text-line map: `FLAT_HEIGHTS` rows, 2 to `FLAT_MAX_ASPECT` times as wide (log-uniform, at most
    `FLAT_MAX_WIDTH`); and the side of the square map of as many pixels, for the channel caps."""
    h = int(rng.choice(FLAT_HEIGHTS))
    w = min(FLAT_MAX_WIDTH, int(round(h * math.exp(rng.uniform(math.log(2), math.log(FLAT_MAX_ASPECT))))))
    return h, w, max(1, int(math.sqrt(h * w)))


def flat_entries(seed: int = 1, size: int = 150, contexts: tuple[int, ...] = (1, 0)) -> list[SweepEntry]:
    """Convs, depthwise convs, element-wise ops and pools on text-line maps (`FLAT_HEIGHTS` rows, 2 to
    `FLAT_MAX_ASPECT` times as wide, log-uniform): on a map 2 or 3 rows high most of a 5x5 window lands in
    the padding, which the square base sweep never shows; `size` entries in all (per context)."""
    rng = np.random.default_rng(seed)
    plan = {"conv": 0.4, "depthwise": 0.3, "eltwise": 0.2, "pool": 0.1}
    entries = []
    for op, share in plan.items():
        for _ in range(max(4, int(size * share))):
            h, w, square = _flat_map(rng)
            if op == "conv":
                k, s = int(rng.choice((1, 3, 3, 5))), int(rng.choice((1, 1, 2)))
                ci, co = _channels(rng, square), _channels(rng, square)
                ci, co = _within_max_macs(ci, co, k * k * h * w, s * s)
                params = dict(ci=ci, co=co, k=k, s=s, act=str(rng.choice(ACTIVATIONS)))
            elif op == "depthwise":
                params = dict(c=_depthwise_channels(rng, square), k=int(rng.choice((3, 5))),
                              s=int(rng.choice((1, 2))), act=str(rng.choice(ACTIVATIONS)))
            elif op == "eltwise":
                params = dict(c=_channels(rng, square), kind=str(rng.choice(ELEMENTWISE_OPS)))
            else:
                params = dict(c=_channels(rng, square), kind="gap" if h < 2 else str(rng.choice(POOL_OPS)))
            for ctx in contexts:
                entries.append(SweepEntry.make(op, ctx=ctx, hw=h, w=w, **params))
    return list(dict.fromkeys(entries))


def spelled_activation_entries(seed: int = 2, size: int = 48, contexts: tuple[int, ...] = (1, 0)) -> list[SweepEntry]:
    """Each of `SPELLED_ACTIVATIONS` at `size` / 4 shapes: half square (`RESOLUTIONS`), half text-line maps."""
    rng = np.random.default_rng(seed)
    entries = []
    for kind in SPELLED_ACTIVATIONS:
        for index in range(max(2, size // len(SPELLED_ACTIVATIONS))):
            if index % 2:
                h, w, square = _flat_map(rng)
                shape = dict(hw=h, w=w)
            else:
                square = int(rng.choice(RESOLUTIONS))
                shape = dict(hw=square)
            for ctx in contexts:
                entries.append(SweepEntry.make("eltwise", ctx=ctx, c=_channels(rng, square), kind=kind, **shape))
    return list(dict.fromkeys(entries))


def hardswish_entries(seed: int = 4, size: int = 40, contexts: tuple[int, ...] = (1, 0)) -> list[SweepEntry]:
    """Convs and depthwise convs (3 to 2) with a HardSwish after them, which a runtime may fuse (onnxruntime
    does, for a HardSwish op and x * HardSigmoid(x)) at a cost of its own; half square (`RESOLUTIONS`),
    half text-line maps. The base sweep's activations are none, ReLU and ReLU6."""
    rng = np.random.default_rng(seed)
    entries = []
    for index in range(size):
        if index % 2:
            h, w, square = _flat_map(rng)
            shape = dict(hw=h, w=w)
        else:
            square = int(rng.choice(RESOLUTIONS))
            shape, h, w = dict(hw=square), square, square
        if index % 5 < 3:
            k, s = int(rng.choice((1, 1, 3))), int(rng.choice((1, 1, 2)))
            ci, co = _channels(rng, square), _channels(rng, square)
            ci, co = _within_max_macs(ci, co, k * k * h * w, s * s)
            op, params = "conv", dict(ci=ci, co=co, k=k, s=s)
        else:
            op, params = "depthwise", dict(c=_channels(rng, square) * int(rng.choice((3, 6))) // 2,
                                           k=int(rng.choice((3, 5))), s=int(rng.choice((1, 2))))
        for ctx in contexts:
            entries.append(SweepEntry.make(op, ctx=ctx, act="hardswish", **params, **shape))
    return list(dict.fromkeys(entries))


# The smallest maps: the last stages of small-input models (32x32 images, MobileNets at 96-128 pixels) and
# the 1x1 convs of every squeeze-excitation gate, below the base sweep's smallest resolution (7).
SMALL_RESOLUTIONS = (1, 2, 3, 4, 5, 6)


def small_map_entries(seed: int = 5, size: int = 60, contexts: tuple[int, ...] = (1, 0)) -> list[SweepEntry]:
    """Convs (1x1 mostly: on a 1x1 map, an excitation gate's), depthwise convs, element-wise ops and
    pools on `SMALL_RESOLUTIONS` maps, where a kernel's fixed costs outweigh its arithmetic; `size` entries
    in all (per context)."""
    rng = np.random.default_rng(seed)
    plan = {"conv": 0.45, "depthwise": 0.3, "eltwise": 0.15, "pool": 0.1}
    entries = []
    for op, share in plan.items():
        for _ in range(max(4, int(size * share))):
            hw = int(rng.choice(SMALL_RESOLUTIONS))
            if op == "conv":
                k = 1 if hw < 3 else int(rng.choice((1, 1, 3)))
                params = dict(ci=_channels(rng, hw), co=_channels(rng, hw), k=k, s=1, act=str(rng.choice(ACTIVATIONS)))
            elif op == "depthwise":
                params = dict(c=_depthwise_channels(rng, hw), k=int(rng.choice((3, 5))),
                              s=1, act=str(rng.choice(ACTIVATIONS)))
            elif op == "eltwise":
                params = dict(c=_channels(rng, hw), kind=str(rng.choice(ELEMENTWISE_OPS)))
            else:
                params = dict(c=_channels(rng, hw), kind="gap" if hw < 2 else str(rng.choice(POOL_OPS)))
            for ctx in contexts:
                entries.append(SweepEntry.make(op, ctx=ctx, hw=hw, **params))
    return list(dict.fromkeys(entries))


RESIZE_SCALES = (2, 2, 2, 4, 8)  # a detector neck's upsampling: mostly by 2, to a common size by 4 or 8
RESIZE_MAX_ELEMENTS = 1 << 22  # the upsampled map, at most 16 MB in float32


def exported_resize_entries(seed: int = 7, size: int = 30, contexts: tuple[int, ...] = (1, 0)) -> list[SweepEntry]:
    """Nearest upsampling spelled as exporters write it (`EXPORTED_NEAREST`: each output pixel copies input
    pixel floor(o / scale)), by `RESIZE_SCALES`, from maps of 7 to 112 pixels: onnxruntime copies such a
    resize by whole pixels, in its blocked conv layout when its neighbours are there (96 channels 80 -> 160:
    2176 us spelled with the defaults, 439 us so, inside a sweep network)."""
    rng = np.random.default_rng(seed)
    entries = []
    for _ in range(size):
        scale = int(rng.choice(RESIZE_SCALES))
        hw = int(rng.choice([r for r in RESOLUTIONS if r * scale <= 224]))
        c = max(3, min(_channels(rng, hw * scale), RESIZE_MAX_ELEMENTS // (hw * scale) ** 2))
        for ctx in contexts:
            entries.append(SweepEntry.make("memory", ctx=ctx, c=c, hw=hw, kind="resize", coord="asymmetric",
                                           scale=scale))
    return list(dict.fromkeys(entries))


EXCITATION_RESOLUTIONS = (2, 3, 4, 5, 7, 8, 10, 14, 20, 28)  # where MobileNetV3-like models put their gates


def excitation_entries(seed: int = 8, size: int = 40, contexts: tuple[int, ...] = (1, 0)) -> list[SweepEntry]:
    """A squeeze-excitation gate's own kernels on the maps where models put them: the global average pool
    that squeezes the map, and the Mul that scales it by the gate ([1,C,H,W] * [1,C,1,1]), in turn; the
    base sweep draws them among many element-wise kinds and pools, rarely on a small map, and these few-us
    kernels came out 3-5x under their in-network time (a Mul of 144 channels at 8x8: 1.8 against 8.5 us)."""
    rng = np.random.default_rng(seed)
    entries = []
    for index in range(size):
        hw = int(rng.choice(EXCITATION_RESOLUTIONS))
        op, kind = ("pool", "gap") if index % 2 else ("eltwise", "scale")
        c = _channels(rng, hw)
        for ctx in contexts:
            entries.append(SweepEntry.make(op, ctx=ctx, c=c, hw=hw, kind=kind))
    return list(dict.fromkeys(entries))


SOFTMAX_AXIS_SIZES = (2, 4, 8, 16, 32, 80, 100)
SOFTMAX_MAX_ELEMENTS = 1 << 21


def softmax_axis_entries(seed: int = 6, size: int = 30, contexts: tuple[int, ...] = (1, 0)) -> list[SweepEntry]:
    """Softmax over axis 1 of a 3-D or (every other entry) a 4-D tensor, `SOFTMAX_AXIS_SIZES` long, the
    elements after it log-uniform from 2 to 40000 (at most `SOFTMAX_MAX_ELEMENTS` in all): onnxruntime
    computes a softmax over an axis that is not the last by transposing that axis last and back, which
    costs several times the softmax itself, and more for a 4-D tensor than a 3-D one of as many elements
    (9 ns an element against 2 over an axis of 16); the base sweep's softmax is over the last axis."""
    rng = np.random.default_rng(seed)
    entries = []
    for index in range(size):
        m, n = int(rng.choice((1, 1, 4))), int(rng.choice(SOFTMAX_AXIS_SIZES))
        inner = int(round(math.exp(rng.uniform(math.log(2), math.log(40000)))))
        inner = max(2, min(inner, SOFTMAX_MAX_ELEMENTS // (m * n)))
        if index % 2:  # split the elements after the axis into two axes, the first 1 to 64 long
            h = max(1, min(inner, int(round(math.exp(rng.uniform(0, math.log(64)))))))
            params = dict(hw=h, w=max(1, inner // h))
        else:
            params = dict(inner=inner)
        for ctx in contexts:
            entries.append(SweepEntry.make("softmax", ctx=ctx, m=m, n=n, **params))
    return list(dict.fromkeys(entries))


def sweep_entries(size: int = 600, models: Iterable[Model] = ()) -> list[SweepEntry]:
    """The base sweep of `size`, its text-line entries (a quarter as many), the spelled-out activations
    (a twelfth as many), convs with a HardSwish (a fifteenth), the smallest maps (a tenth), softmax over
    a middle axis (a thirtieth), nearest upsampling as exported (a fortieth), squeeze-excitation gates'
    pools and Muls (a thirtieth), plus the entries around the kernels of `models`, each entry once."""
    entries = (base_entries(size=size) + flat_entries(size=max(size // 4, 16))
               + spelled_activation_entries(size=max(size // 12, 8)) + hardswish_entries(size=max(size // 15, 8))
               + small_map_entries(size=max(size // 10, 8)) + softmax_axis_entries(size=max(size // 30, 8))
               + exported_resize_entries(size=max(size // 40, 8)) + excitation_entries(size=max(size // 30, 8))
               + entries_from_models(models))
    return list(dict.fromkeys(entries))


def write_sweep(entries: list[SweepEntry], folder: Path) -> Path:
    """Write every microbenchmark, every kernel's network, and a manifest, for measuring on another machine.

    Beside the entries' models: each kernel's network (`SweepEntry.network`, once per in-context id),
    a trivial model for the per-run overhead, the two chains that calibrate the profiler's own cost
    (`calibration_chain`), and `profile_on_device.py`, which profiles the networks
    on a device with nothing but onnxruntime (see that script's docstring for the whole round trip).
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest, networks = [], {}
    for index, entry in enumerate(entries):
        name = f"{index:05d}_{entry.op}.onnx"
        onnx.save(entry.build(), str(folder / name))
        manifest.append({"id": entry.id, "file": name})
        kernel = entry.in_context
        if kernel.id not in networks:
            networks[kernel.id] = f"{index:05d}_{entry.op}.network.onnx"
            onnx.save(kernel.network(), str(folder / networks[kernel.id]))
    onnx.save(OVERHEAD_ENTRY.build(), str(folder / "overhead.onnx"))
    onnx.save(calibration_chain(1), str(folder / "calibration_short.onnx"))
    onnx.save(calibration_chain(1 + CALIBRATION_NODES), str(folder / "calibration_long.onnx"))
    shutil.copyfile(Path(__file__).with_name("profile_on_device.py"), folder / "profile_on_device.py")
    path = folder / "manifest.json"
    path.write_text(json.dumps({"opset": OPSET, "entries": manifest, "overhead": "overhead.onnx",
                                "networks": [{"id": k, "network": v} for k, v in networks.items()]}, indent=1))
    return path


def read_networks(folder: Path) -> list[tuple[SweepEntry, Path]]:
    """The kernel networks a sweep folder holds: (in-context entry, network file), as `write_sweep` wrote them."""
    manifest = Path(folder) / "manifest.json"
    read_manifest(folder)  # the same checks first
    try:
        return [(SweepEntry.from_id(n["id"]), Path(folder) / n["network"])
                for n in json.loads(manifest.read_text())["networks"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise TailorError(f"{manifest}: no kernel networks in it ({exc}); write the sweep again with "
                          "`onnx-tailor costmodel sweep`") from None


def read_manifest(folder: Path) -> list[SweepEntry]:
    """The entries of a sweep that `write_sweep` wrote into `folder`, in their order."""
    manifest = Path(folder) / "manifest.json"
    if not manifest.is_file():
        raise TailorError(f"{folder}: no manifest.json (write one with `onnx-tailor costmodel sweep`)")
    try:
        return [SweepEntry.from_id(e["id"]) for e in json.loads(manifest.read_text())["entries"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise TailorError(f"{manifest}: not a sweep manifest ({exc})") from None
