"""Refinement through an activation: gradient steps on conv -> activation -> [SE gate] -> 1x1 conv.

Least squares fits one linear layer at a time. A pair of convs with an
activation between them, as an IBN block is after fuse_ibn_expansion,

    x -> Conv KxK (W1, b1) -> act -> [* g, squeeze-excitation] -> Conv 1x1 (W2, b2) -> y

is refined instead by minimizing, on calibration inputs, the error at its end:

    L = ||Y_hat - Y||^2 / ||Y||^2,   Y_hat = (g * A) W2 + b2,   A = act(P W1 + b1),   g = se(mean_positions(A))

where P holds the im2col rows of x (`least_squares.patches`; a batch of whole
samples, so the SE mean is exact) and Y the target's rows. The gradients are
the chain rule written out (' is a transpose, * elementwise):

    R = 2 (Y_hat - Y) / ||Y||^2         dW2 = (g * A)' R     db2 = sum R
    D = R W2'                           dg = sum_positions(D * A)
    dA = D * g + se'(dg) / positions    dZ = dA * act'(Z)    dW1 = P' dZ    db1 = sum dZ

with se' the SE branch's backward pass (1x1 convs and elementwise steps; its
own weights stay as they are: they are not part of the rewrite). Adam takes
`steps` of them, one mini-batch per step, with a step size relative to each
tensor's RMS (so one setting suits layers of any scale) that warms up over
`WARMUP` steps and decays along a cosine. A mini-batch holds at most
`BATCH_ELEMENTS` im2col elements (float32) and batches follow a seeded
order, so the same inputs give the same bytes. Adam's first steps move every
weight by about the step size whatever its gradient, which can undo a fit
that was already close (a few steps, or a block least squares fits almost
exactly): the refined weights are kept only if L on all the data went down.
Where it has not gone down after `GIVE_UP_AT` of the steps (and at least
twice the warm-up), the rest are not taken: the least-squares weights stand.
With every block of digits (9), the PaddleOCR classifier (11) and
MobileNetV2-224 with seeded random weights (16) fused in turn, 100 steps
(bench/refine_checkpoint.py), each refinement that ended below its start was
below it at step 50 (at most 0.84 of it; 0.997 for two of MobileNetV2-224's),
and each that did not was at least 1.055 of it there: on those models the
checkpoint changes no weights, and the 11 MobileNetV2-224 blocks refinement
cannot improve (the deep ones least squares fits almost exactly) cost 50
steps, not 100. At step 30 three kept blocks were still above their start.

Activations are evaluated by `Elementwise`: the ONNX nodes that spell them
(`analysis.match_activation_chain`), interpreted in numpy with their derivative
(forward mode: every step carries a value and d value / d input), so each
spelling of relu, relu6/clip, hardswish, swish, hardsigmoid gates and leaky
relu is followed as onnxruntime computes it. Ops outside that set (Elu,
Gelu or its erf spelling, PRelu, ...) are named, and the caller leaves such a
block unrefined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ir import Model
from ..ir.conv_geometry import ConvGeometry
from .least_squares import patches, rows, single_threaded_blas

BATCH_ELEMENTS = 1 << 22  # im2col elements per mini-batch (16 MB in float32)
# The im2col rows of every sample are made once per refinement, not once per step, when they take at most
# this many elements (256 MB in float32): a mini-batch's rows are then a selection of them, the same values.
PATCHED_ELEMENTS = 1 << 26
LEARNING_RATE = 0.04  # Adam's step, relative to each tensor's RMS
WARMUP = 10  # steps over which the step size rises linearly to LEARNING_RATE; then it decays to zero along a cosine
GIVE_UP_AT = 0.5  # of the steps: where L on all the data must be below its start for the rest to be taken
BETAS = (0.9, 0.999)

Dual = tuple[np.ndarray, np.ndarray | float]  # (value, derivative with respect to the activation's input)


def _relu(x: Dual, node, model) -> Dual:
    on = x[0] > 0
    return np.where(on, x[0], 0), x[1] * on


def _clip(x: Dual, node, model) -> Dual:
    low, high = _clip_bound(model, node, 1, "min"), _clip_bound(model, node, 2, "max")
    on = np.ones(x[0].shape, bool)
    if low is not None:
        on &= x[0] > low
    if high is not None:
        on &= x[0] < high
    return np.clip(x[0], low, high), x[1] * on


def _clip_bound(model: Model, node, index: int, attribute: str) -> float | None:
    if len(node.input) > index and node.input[index]:
        return float(model.constant(node.input[index]).reshape(()))
    value = model.attr(node, attribute)  # before opset 11 the bounds are attributes
    return None if value is None else float(value)


def _sigmoid(x: Dual, node, model) -> Dual:
    s = 0.5 + 0.5 * np.tanh(0.5 * x[0])  # 1 / (1 + exp(-x)) without overflowing
    return s, x[1] * s * (1 - s)


def _hard_sigmoid(x: Dual, node, model, alpha: float | None = None, beta: float | None = None) -> Dual:
    alpha = model.attr(node, "alpha", 0.2) if alpha is None else alpha
    beta = model.attr(node, "beta", 0.5) if beta is None else beta
    u = alpha * x[0] + beta
    on = (u > 0) & (u < 1)
    return np.clip(u, 0, 1), x[1] * alpha * on


def _hard_swish(x: Dual, node, model) -> Dual:
    gate = _hard_sigmoid(x, node, model, 1 / 6, 0.5)  # ONNX HardSwish: x * HardSigmoid(x, 1/6, 1/2)
    return x[0] * gate[0], x[1] * gate[0] + x[0] * gate[1]


def _leaky_relu(x: Dual, node, model) -> Dual:
    slope = np.where(x[0] >= 0, 1, model.attr(node, "alpha", 0.01)).astype(x[0].dtype)
    return x[0] * slope, x[1] * slope


def _tanh(x: Dual, node, model) -> Dual:
    t = np.tanh(x[0])
    return t, x[1] * (1 - t * t)


_UNARY: dict[str, Callable] = {"Relu": _relu, "Clip": _clip, "Sigmoid": _sigmoid, "HardSigmoid": _hard_sigmoid,
                               "HardSwish": _hard_swish, "LeakyRelu": _leaky_relu, "Tanh": _tanh}
_BINARY: dict[str, Callable[[Dual, Dual], Dual]] = {
    "Add": lambda a, b: (a[0] + b[0], a[1] + b[1]),
    "Sub": lambda a, b: (a[0] - b[0], a[1] - b[1]),
    "Mul": lambda a, b: (a[0] * b[0], a[1] * b[0] + a[0] * b[1]),
    "Div": lambda a, b: (a[0] / b[0], (a[1] * b[0] - a[0] * b[1]) / (b[0] * b[0])),
}


@dataclass(frozen=True)
class Elementwise:
    """An activation as the ONNX nodes that compute it from one tensor, evaluated with its derivative."""

    model: Model
    input: str
    nodes: tuple[str, ...]  # in topological order; empty for no activation (the identity)
    output: str

    @staticmethod
    def of(model: Model, tensor: str, nodes: tuple[str, ...] = (), output: str | None = None) -> "Elementwise | str":
        """The evaluator of `nodes` (computing `output` from `tensor` alone), or why numpy cannot follow them."""
        known = {tensor, *(model.node(n).output[0] for n in nodes)}
        for name in nodes:
            node = model.node(name)
            if node.op_type in _UNARY:
                if any(i and model.constant(i) is None for i in node.input[1:]):  # Clip's bounds
                    return f"{node.op_type} {name} has a bound computed at run time"
                continue
            if node.op_type not in _BINARY:
                return f"refinement cannot differentiate {node.op_type} ({name})"
            for operand in node.input:
                value = model.constant(operand) if operand not in known else None
                if operand not in known and (value is None or value.size != 1):
                    return f"{node.op_type} {name} has an operand that is neither computed from {tensor} nor a scalar"
        return Elementwise(model, tensor, tuple(nodes), output or tensor)

    def __call__(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f(z), f'(z)), elementwise, in z's dtype."""
        values: dict[str, Dual] = {self.input: (z, np.ones_like(z))}
        for name in self.nodes:
            node = self.model.node(name)
            if node.op_type in _UNARY:
                out = _UNARY[node.op_type](values[node.input[0]], node, self.model)
            else:
                operands = [values[i] if i in values else (z.dtype.type(self.model.constant(i).reshape(())), 0.0)
                            for i in node.input]
                out = _BINARY[node.op_type](*operands)
            # The derivative as it is when it already has z's shape and dtype (read-only, never written): a
            # copy of an [samples x positions, channels] matrix per node was a fifth of a refinement's forward.
            values[node.output[0]] = (np.asarray(out[0], z.dtype),
                                      np.broadcast_to(out[1], z.shape).astype(z.dtype, copy=False))
        value, derivative = values[self.output]
        return value, np.asarray(derivative)


@dataclass(frozen=True)
class SqueezeExcitation:
    """A squeeze-excitation branch, activation -> gate: the mean over positions, then 1x1 convs
    ([Cout, Cin] matrices and biases) and `Elementwise` steps. Its weights are data here, never changed."""

    layers: tuple[tuple[np.ndarray, np.ndarray] | Elementwise, ...]

    @staticmethod
    def of(model: Model, nodes: tuple[str, ...]) -> "SqueezeExcitation | str":
        """The branch of `analysis` SE nodes (pool, ..., the scaling Mul), or why numpy cannot follow it."""
        pool = model.node(nodes[0])
        if not (pool.op_type == "GlobalAveragePool"
                or (pool.op_type == "ReduceMean" and sorted(model.attr(pool, "axes", [])) == [2, 3]
                    and model.attr(pool, "keepdims", 1) == 1)):
            return f"the squeeze-excitation pools with {pool.op_type} over other axes than H, W"
        layers, segment, source = [], [], pool.output[0]
        for name in (*nodes[1:-1], None):
            node = model.node(name) if name else None
            if node is not None and node.op_type != "Conv":
                segment.append(name)
                continue
            if segment:  # the elementwise steps since the last conv
                steps = Elementwise.of(model, source, tuple(segment), model.node(segment[-1]).output[0])
                if isinstance(steps, str):
                    return steps
                layers.append(steps)
                segment, source = [], steps.output
            if node is None:
                break
            weight = model.constant(node.input[1])
            bias = model.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if weight is None or weight.shape[2:] != (1, 1) or model.attr(node, "group", 1) != 1:
                return f"the squeeze-excitation conv {name} is not a constant 1x1 conv"
            layers.append((weight[:, :, 0, 0].astype(np.float32),
                           np.zeros(len(weight), np.float32) if bias is None else bias.astype(np.float32)))
            source = node.output[0]
        return SqueezeExcitation(tuple(layers))

    def forward(self, pooled: np.ndarray) -> tuple[np.ndarray, list]:
        """(gate [B, C], what `backward` needs) from the per-sample means [B, C]."""
        tape, h = [], pooled
        for layer in self.layers:
            if isinstance(layer, Elementwise):
                h, slope = layer(h)
                tape.append(slope)
            else:
                tape.append(None)
                h = h @ layer[0].T + layer[1]
        return h, tape

    def backward(self, tape: list, d_gate: np.ndarray) -> np.ndarray:
        """d loss / d pooled from d loss / d gate."""
        d = d_gate
        for layer, slope in zip(reversed(self.layers), reversed(tape)):
            d = d * slope if isinstance(layer, Elementwise) else d @ layer[0]
        return d


@dataclass
class _Adam:
    """Adam on one tensor, its step relative to the tensor's initial RMS."""

    value: np.ndarray
    scale: float
    first: np.ndarray
    second: np.ndarray

    @staticmethod
    def of(value: np.ndarray, fallback_scale: float) -> "_Adam":
        rms = float(np.sqrt(np.mean(np.square(value, dtype=np.float64))))
        value = value.astype(np.float32)  # a copy: the caller's array is never changed
        return _Adam(value, rms if rms > 0 else fallback_scale, np.zeros_like(value), np.zeros_like(value))

    def step(self, gradient: np.ndarray, rate: float, t: int) -> None:
        b1, b2 = BETAS
        self.first = b1 * self.first + (1 - b1) * gradient
        self.second = b2 * self.second + (1 - b2) * gradient * gradient
        corrected = self.first / (1 - b1 ** t) / (np.sqrt(self.second / (1 - b2 ** t)) + 1e-12)
        self.value -= np.float32(rate * self.scale) * corrected.astype(np.float32)


@dataclass
class ConvPair:
    """x -> Conv KxK (w1, b1) -> activation -> [squeeze-excitation gate] -> Conv 1x1 (w2, b2), in rows.

    w1: [Ci * Kh * Kw, Ce] (im2col order), w2: [Ce, Co]: the transposed ONNX weights."""

    geometry: ConvGeometry
    activation: Elementwise
    gate: SqueezeExcitation | None
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @staticmethod
    def of(geometry: ConvGeometry, activation: Elementwise, gate: SqueezeExcitation | None,
           first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]) -> "ConvPair":
        """From the ONNX weights: first ([Ce, Ci, Kh, Kw], [Ce]), second ([Co, Ce, 1, 1], [Co])."""
        (w1, b1), (w2, b2) = first, second
        return ConvPair(geometry, activation, gate, w1.reshape(len(w1), -1).T.astype(np.float32),
                        b1.astype(np.float32), w2.reshape(len(w2), -1).T.astype(np.float32), b2.astype(np.float32))

    def onnx_weights(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(w1, b1, w2, b2) in ONNX layout: w1 [Ce, Ci, Kh, Kw], w2 [Co, Ce, 1, 1]."""
        ce, co = self.w1.shape[1], self.w2.shape[1]
        return (np.ascontiguousarray(self.w1.T).reshape(ce, -1, *self.geometry.kernel), self.b1.copy(),
                np.ascontiguousarray(self.w2.T).reshape(co, ce, 1, 1), self.b2.copy())

    def patches(self, x: np.ndarray) -> np.ndarray:
        g = self.geometry
        return patches(x, g.kernel, g.strides, g.explicit_pads(x.shape[2:]), g.dilations)

    def forward(self, p: np.ndarray, samples: int) -> tuple[np.ndarray, tuple]:
        """(output rows [samples * positions, Co], what `backward` needs) from im2col rows `p`."""
        a, slope = self.activation(p @ self.w1 + self.b1)
        if self.gate is None:
            return a @ self.w2 + self.b2, (p, a, slope, None, None, a)
        per_sample = a.reshape(samples, -1, a.shape[1])
        gate, tape = self.gate.forward(per_sample.mean(axis=1))
        s = (per_sample * gate[:, None]).reshape(a.shape)
        return s @ self.w2 + self.b2, (p, a, slope, gate, tape, s)

    def gradients(self, cache: tuple, d_out: np.ndarray, samples: int) -> tuple[np.ndarray, ...]:
        """(d w1, d b1, d w2, d b2) from d loss / d output rows."""
        p, a, slope, gate, tape, s = cache
        d_s = d_out @ self.w2.T
        if gate is None:
            d_a = d_s
        else:
            ce = a.shape[1]
            d_s3, a3 = d_s.reshape(samples, -1, ce), a.reshape(samples, -1, ce)
            d_pooled = self.gate.backward(tape, np.einsum("spc,spc->sc", d_s3, a3))
            d_a = (d_s3 * gate[:, None] + d_pooled[:, None] / a3.shape[1]).reshape(a.shape)
        d_z = d_a * slope
        return p.T @ d_z, d_z.sum(0), s.T @ d_out, d_out.sum(0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The output [N, Co, Ho, Wo] on x [N, Ci, H, W] (for checks against onnxruntime)."""
        out, _ = self.forward(self.patches(x), len(x))
        ho, wo = _output_size(self.geometry, x.shape[2:])
        return out.reshape(len(x), ho, wo, -1).transpose(0, 3, 1, 2)

    def batch_size(self, target: np.ndarray) -> int:
        """Samples per mini-batch: as many as `BATCH_ELEMENTS` im2col elements hold, at least one."""
        return int(min(len(target), max(1, BATCH_ELEMENTS // (target[0, 0].size * len(self.w1)))))

    def every_patch(self, x: np.ndarray, target: np.ndarray) -> np.ndarray | None:
        """The im2col rows of each sample of x, [N, positions, features]; None over PATCHED_ELEMENTS."""
        if len(x) * target[0, 0].size * len(self.w1) > PATCHED_ELEMENTS:
            return None
        return self.patches(x).reshape(len(x), target[0, 0].size, len(self.w1))

    def _patches_of(self, x: np.ndarray, every: np.ndarray | None, samples) -> np.ndarray:
        """The im2col rows of x[samples] (`samples` a slice or sorted indices), from `every` when made."""
        return self.patches(x[samples]) if every is None else every[samples].reshape(-1, every.shape[2])

    def error(self, x: np.ndarray, target: np.ndarray, every: np.ndarray | None = None) -> float:
        """L on all of x: ||output - target||^2 / ||target||^2, a mini-batch at a time (`every`: x's rows)."""
        size, squared, energy = self.batch_size(target), 0.0, 0.0
        with single_threaded_blas():
            for start in range(0, len(x), size):
                y = rows(target[start:start + size]).astype(np.float64)
                p = self._patches_of(x, every, slice(start, start + size))
                out, _ = self.forward(p, len(y) // target[0, 0].size)
                squared += float(np.sum((out - y) ** 2))
                energy += float(np.sum(y * y))
        return squared / max(energy, 1e-30)

    def refine(self, x: np.ndarray, target: np.ndarray, steps: int, seed: int = 0,
               on_step: Callable[[int, "ConvPair"], None] | None = None) -> "ConvPair":
        """After `steps` Adam steps on L (module docstring) towards `target` [N, Co, Ho, Wo] from x: a copy,
        or `self` when the steps did not lower L on all of x (a few coarse steps can raise it), or had not
        lowered it after GIVE_UP_AT of them. `on_step(t, weights)` sees the weights after each step
        (bench/refine_checkpoint.py), and must not change them."""
        per_batch = self.batch_size(target)
        w1, w2 = _Adam.of(self.w1, 1.0), _Adam.of(self.w2, 1.0)
        b1, b2 = _Adam.of(self.b1, w1.scale), _Adam.of(self.b2, w2.scale)
        current = ConvPair(self.geometry, self.activation, self.gate, w1.value, b1.value, w2.value, b2.value)
        rng = np.random.default_rng(seed)
        order = np.empty(0, np.int64)
        every = self.every_patch(x, target)
        checkpoint = round(steps * GIVE_UP_AT) if steps * GIVE_UP_AT >= 2 * WARMUP else None
        start = None
        with single_threaded_blas():
            for t in range(1, steps + 1):
                if len(order) < per_batch:  # a fresh seeded permutation each epoch
                    order = np.concatenate([order, rng.permutation(len(x))])
                batch, order = np.sort(order[:per_batch]), order[per_batch:]
                y = rows(target[batch])
                out, cache = current.forward(current._patches_of(x, every, batch), len(batch))
                d_out = (out - y) * np.float32(2 / max(float(np.sum(y * y)), 1e-30))
                rate = LEARNING_RATE * 0.5 * (1 + np.cos(np.pi * (t - 1) / steps)) * min(1.0, t / WARMUP)
                for tensor, gradient in zip((w1, b1, w2, b2), current.gradients(cache, d_out, len(batch))):
                    tensor.step(gradient, rate, t)  # in place: `current` holds the same arrays
                if on_step is not None:
                    on_step(t, current)
                if t == checkpoint:
                    start = self.error(x, target, every)
                    if current.error(x, target, every) >= start:
                        return self
        start = self.error(x, target, every) if start is None else start
        return current if current.error(x, target, every) < start else self


def _output_size(geometry: ConvGeometry, size: tuple[int, ...]) -> tuple[int, ...]:
    pads = geometry.explicit_pads(size)
    half = len(size)
    return tuple((n + pads[i] + pads[i + half] - (k - 1) * d - 1) // s + 1
                 for i, (n, k, s, d) in enumerate(zip(size, geometry.kernel, geometry.strides, geometry.dilations)))
