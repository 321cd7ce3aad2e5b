"""Removing channels from a channel group: which to keep, and refitting the consumers that read them.

align_channels (down to a multiple of P) and scale_depth (an IBN block's
expansion to alpha x its width) both cut the output channels of a conv, and
with them its whole channel group (`channel_groups.plan_group`), to
`keep_count`. This module decides which channels stay and what the group's
consumers (its sinks) compute from the rest; `channel_edit` writes the graph.

`importance` (which channels to keep):
- `greedy` (default): data-aware backward elimination. On calibration
  activations of the original network, repeatedly remove the channel whose
  removal raises the consumers' least-squares reconstruction error the least
  (relative error, summed over the group's consumers), with the refit in the
  loop: a channel the others can stand in for goes first. Closed-form
  (Optimal-Brain-Surgeon style updates of the inverse Gram matrix), so it
  costs one pass over the data.
- `energy`: data-aware, one shot: keep the channels that carry most output
  energy, E[x_c^2] * ||V[:, c]||^2 / E||y||^2 summed over the consumers.
- `l1`: data-free: the L1 norm of each channel's producer filters.
- `first`: keep channels 0..C'-1 (the naive baseline).

`refit`: `lstsq` (default) or `none` (the consumers' kept input weights
unchanged: the naive variant). With lstsq each consumer V, b is refitted as

    V', b' = argmin_{V, b} ||conv(x_K, V) + b - y||^2 + lambda ||V - V[:, K]||^2

on calibration inputs: x_K are the kept channels as the rewritten network
computes them, y is the consumer's output in the reference network (the model
a sequence of rewrites started from: the original in `optimize`, recipe
replay and `apply_pass`, so that a later removal makes up for the error of
earlier steps instead of preserving it; the input model for one step); lambda =
`ridge` x the mean diagonal of the centred Gram matrix (`least_squares.Moments`).
Consumers refitted: Conv (2-D, any kernel, stride, padding and dilation, by
im2col), Gemm and MatMul. A ConvTranspose consumer only drops its rows.
Consumers are refitted in dependency order: one that reads the output of
another consumer of the group (the SE reduce conv feeds the gate that the
projection reads) is fitted on activations of the network with the first
already refitted.

`calib` is the calibration split's inputs. Without it the removal falls back
to FALLBACK_SAMPLES seeded random (standard normal) samples: enough to run,
but channel statistics of noise are not those of real data, and the
selection and refit are much better on real calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis import upstream_nodes
from ..errors import PassError
from ..ir import Model, seeded_samples
from ..ir.conv_geometry import ConvGeometry
from .base import Param
from .capture import Calibration, capture, capture_fit
from .channel_edit import Keep, edit_group
from .channel_groups import ChannelGroup, source_weight_axis, weight_rows
from .graph_edit import constant_input, set_constant_input
from .least_squares import Moments, single_threaded_blas

FALLBACK_SAMPLES = 32
# The parameters every channel-removing pass takes, declared once.
REMOVAL_PARAMS = (
    Param("importance", str, "greedy", "which channels to keep: greedy | energy | l1 | first",
          choices=("greedy", "energy", "l1", "first")),
    Param("refit", str, "lstsq", "refit the consumers on calibration data: lstsq | none", choices=("lstsq", "none")),
    Param("ridge", float, 1e-3, "ridge strength, relative to the mean diagonal of the Gram matrix", at_least=0.0),
)


def removal_summary(group: ChannelGroup, keep_count: int) -> str:
    return (f"{group.channels} -> {keep_count} channels; narrows {len(group.sources)} conv(s), "
            f"refits {len(group.sinks)} consumer(s)")


def remove_channels(model: Model, group: ChannelGroup, keep_count: int, importance: str = "greedy",
                    refit: str = "lstsq", ridge: float = 1e-3, calib: Calibration | None = None,
                    reference: Model | None = None) -> Model:
    """`model` with the channels of `group` (planned on `model` with removing=True) cut to
    `keep_count`, chosen by `importance` and with consumers refitted by `refit` towards their
    outputs in `reference` (default `model`; see the module docstring)."""
    if not 0 < keep_count < group.channels:
        raise PassError(f"cannot keep {keep_count} of the {group.channels} channels of '{group.anchor}'")
    with single_threaded_blas():
        return _remove_channels(model, group, keep_count, importance, refit, ridge, calib, reference)


def _remove_channels(model: Model, group: ChannelGroup, keep_count: int, importance: str, refit: str, ridge: float,
                     calib: Calibration | None, reference: Model | None) -> Model:
    data_aware = importance in ("greedy", "energy") or refit == "lstsq"
    calib = fallback_calibration(model) if calib is None and data_aware else calib
    sinks = [_Sink.read(model, group, name) for name in group.ordered_sinks(model)]
    fitted = [s for s in sinks if s.refittable]  # a ConvTranspose consumer only drops its rows
    full: dict[str, Moments] = {}  # per consumer, on the original network: every channel, every output
    targets: dict[str, np.ndarray] = {}
    if data_aware and fitted:
        inputs, aimed = capture_fit(model, [s.input for s in fitted], [s.output for s in fitted], calib, reference)
        every = np.arange(group.channels)
        full = {s.name: s.moments(inputs[s.input], aimed[s.output], s.out_keep(every)) for s in fitted}
        targets = {s.name: aimed[s.output] for s in fitted}
    keep = _choose(model, group, fitted, full, keep_count, importance, ridge)

    refits: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    pending = fitted if refit == "lstsq" else []
    upstream = {s.name: upstream_nodes(model, s.input) for s in sinks}
    while pending:
        # A consumer downstream of another one not yet refitted waits for it: it must be fitted
        # on what the network will feed it after that refit.
        ready = [s for s in pending if not any(o.name in upstream[s.name] for o in pending if o is not s)]
        # With no consumer of the group upstream at all, nothing it reads has changed but the dropped
        # channels: the kept ones are what the original network computes, so its moments restrict
        # exactly and need no new run.
        unchanged = {s.name for s in ready if not any(o.name in upstream[s.name] for o in sinks if o is not s)}
        changed = [s.input for s in ready if s.name not in unchanged]
        seen = capture(_narrow(model, group, keep, refits), changed, calib) if changed else {}
        for sink in ready:
            if sink.name in unchanged:
                moments = full[sink.name].restrict(sink.columns(keep), sink.out_keep(keep))
            else:
                moments = sink.moments(seen[sink.input], targets[sink.name], sink.out_keep(keep))
            refits[sink.name] = moments.solve(ridge, prior=sink.start(keep))
        pending = [s for s in pending if s not in ready]
    return _narrow(model, group, keep, refits)


def fallback_calibration(model: Model) -> Calibration:
    """FALLBACK_SAMPLES seeded random samples when no calibration data is given (`ir.seeded_samples`:
    each input's batch where the model has it; `capture` feeds a fixed-batch model run by run)."""
    return seeded_samples(model, FALLBACK_SAMPLES)


def _narrow(model: Model, group: ChannelGroup, keep: np.ndarray,
            refits: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> Model:
    """`model` with only channels `keep` of the group; consumers in `refits` get those weights
    ([features, outputs] matrices and biases), the others their kept input weights."""
    written = {name: (lambda graph, node, fit=fit: _write_refit(graph, node, *fit)) for name, fit in refits.items()}
    return edit_group(model, group, Keep(keep), written)


# -- consumers as linear maps ---------------------------------------------------------------


@dataclass
class _Sink:
    """A consumer of the group as a linear map: output rows = features @ weight + bias."""

    name: str
    input: str  # the tensor it reads (the flattened one behind a Flatten)
    output: str
    features_per_channel: int  # columns of its design matrix per group channel (kh*kw for a Conv)
    weight: np.ndarray  # [features, outputs], Gemm's alpha applied
    bias: np.ndarray | None  # [outputs], Gemm's beta applied; None for MatMul
    geometry: ConvGeometry | None  # a Conv's; None for a matrix
    refittable: bool
    is_source: bool

    @staticmethod
    def read(model: Model, group: ChannelGroup, name: str) -> "_Sink":
        node = model.node(name)
        op, w = node.op_type, model.constant(node.input[1])
        b = model.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        rows = group.sinks[name]
        geometry, refittable = None, True
        if op == "Conv":
            outputs = w.shape[0]
            matrix = w.reshape(outputs, -1).T
            features = int(np.prod(w.shape[2:]))
            bias = np.zeros(outputs, np.float64) if b is None else b.astype(np.float64)
            refittable = w.ndim == 4
            geometry = ConvGeometry.of(model, node)
        elif op == "Gemm":
            alpha, beta = model.attr(node, "alpha", 1.0), model.attr(node, "beta", 1.0)
            matrix = (w.T if model.attr(node, "transB", 0) else w) * alpha
            features = rows
            outputs = matrix.shape[1]
            refittable = b is None or b.size in (1, outputs)  # a per-row C is not a bias
            bias = np.zeros(outputs) if b is None or not refittable else \
                np.broadcast_to(b * beta, (1, outputs)).reshape(outputs)
        elif op == "MatMul":
            matrix, features, bias = w, rows, None
        else:  # ConvTranspose: its rows are dropped, never refitted
            matrix, features, bias, refittable = w.reshape(w.shape[0], -1), rows, None, False
        return _Sink(name, node.input[0], node.output[0], features, matrix.astype(np.float64),
                     None if bias is None else np.asarray(bias, np.float64), geometry, refittable,
                     name in group.sources)

    def columns(self, channels: np.ndarray) -> np.ndarray:
        return weight_rows(channels, self.features_per_channel)

    def out_keep(self, keep: np.ndarray) -> np.ndarray | None:
        """A consumer that also produces the group (a conv inside a residual stage) loses outputs too."""
        return keep if self.is_source else None

    def start(self, keep: np.ndarray) -> np.ndarray:
        """The kept-channel weights: what the ridge pulls the refit towards."""
        weight = self.weight[self.columns(keep)]
        return weight[:, keep] if self.is_source else weight

    def moments(self, x: np.ndarray, y: np.ndarray, out_keep: np.ndarray | None) -> Moments:
        """Sufficient statistics of (design rows of x, target rows of y), accumulated in chunks."""
        return Moments.accumulate(x, y, self.geometry, with_bias=self.bias is not None, outputs=out_keep)


def _write_refit(graph, node, matrix: np.ndarray, bias: np.ndarray | None) -> None:
    """Store a refitted [features, outputs] matrix and bias in the consumer's own layout."""
    dtype = constant_input(node, 1).dtype
    if node.op == "Conv":
        kernel = constant_input(node, 1).shape[2:]
        weight = matrix.T.reshape((matrix.shape[1], -1) + tuple(kernel))
        set_constant_input(graph, node, 1, weight.astype(dtype), "weight_refit")
        set_constant_input(graph, node, 2, bias.astype(dtype), "bias_refit")
    elif node.op == "Gemm":
        alpha = float(node.attrs.get("alpha", 1.0))
        beta = float(node.attrs.get("beta", 1.0))
        weight = matrix / alpha
        set_constant_input(graph, node, 1, (weight.T if node.attrs.get("transB", 0) else weight).astype(dtype),
                           "weight_refit")
        if beta == 0.0 or constant_input(node, 2) is None:
            node.attrs["beta"] = beta = 1.0
        set_constant_input(graph, node, 2, (bias / beta).astype(dtype), "bias_refit")
    else:  # MatMul
        set_constant_input(graph, node, 1, matrix.astype(dtype), "weight_refit")
# -- choosing the channels ------------------------------------------------------------------


def _choose(model: Model, group: ChannelGroup, sinks: list[_Sink], full: dict[str, "Moments"],
            keep_count: int, importance: str, ridge: float) -> np.ndarray:
    channels = group.channels
    if importance == "first":
        return np.arange(keep_count)
    if importance == "l1" or not sinks:  # no consumer with a design matrix: nothing to be data-aware on
        score = np.zeros(channels)
        for name in group.sources:
            node = model.node(name)
            w = np.abs(model.constant(node.input[1]).astype(np.float64))
            per_channel = np.moveaxis(w, source_weight_axis(node.op_type), 0).reshape(channels, -1).sum(1)
            score += per_channel / max(per_channel.sum(), 1e-30)
        return np.sort(np.argsort(-score, kind="stable")[:keep_count])
    moments = [full[s.name] for s in sinks]
    if importance == "energy":
        score = np.zeros(channels)
        for sink, m in zip(sinks, moments):
            per_feature = np.diag(m.xx) / m.n * np.sum(sink.weight ** 2, axis=1)
            score += per_feature.reshape(channels, -1).sum(1) / max(m.yy / m.n, 1e-30)
        return np.sort(np.argsort(-score, kind="stable")[:keep_count])
    return _greedy(sinks, moments, channels, keep_count, ridge)


def _greedy(sinks: list[_Sink], moments: list[Moments], channels: int, keep_count: int,
            ridge: float) -> np.ndarray:
    """Backward elimination by least-squares reconstruction error (see the module docstring).

    Per consumer, with H = (G + lam I)^-1 over the kept features and W = H X'y the fitted weights,
    removing channel c (feature block B) raises the squared error by tr(W_B' (H_BB)^-1 W_B), and
    leaves H' = H_rr - H_rB (H_BB)^-1 H_Br and W' = W_r - H_rB (H_BB)^-1 W_B over the rest.
    """
    states = []
    for sink, m in zip(sinks, moments):
        gram, cross = m.centred()
        lam = max(m.penalty(gram, ridge), 1e-9 * m.penalty(gram, 1.0))
        inverse = np.linalg.inv(gram + lam * np.eye(len(gram)))
        states.append([inverse, inverse @ cross, sink.features_per_channel, max(m.yy, 1e-30)])
    if all(f == 1 for _, _, f, _ in states):
        return _greedy_in_place(states, channels, keep_count)
    return _greedy_blocks(states, channels, keep_count)


def _greedy_blocks(states: list, channels: int, keep_count: int) -> np.ndarray:
    """`_greedy`'s elimination for any number of features per channel: [inverse, weight, features per
    channel, energy] per consumer, each state's matrices replaced by smaller ones at every elimination."""
    kept = list(range(channels))
    while len(kept) > keep_count:
        cost = np.zeros(len(kept))
        blocks = []
        for inverse, weight, f, energy in states:
            k = len(kept)
            h_bb = inverse.reshape(k, f, k, f)[np.arange(k), :, np.arange(k), :]  # [k, f, f]
            h_bb_inv = np.linalg.inv(h_bb)
            w_b = weight.reshape(k, f, -1)
            cost += np.einsum("cfo,cfg,cgo->c", w_b, h_bb_inv, w_b) / energy
            blocks.append(h_bb_inv)
        drop = int(np.argmin(cost))
        for state, h_bb_inv in zip(states, blocks):
            inverse, weight, f, _ = state
            lo, hi = drop * f, (drop + 1) * f
            h_rb = _without(inverse[:, lo:hi], lo, hi, 0) @ h_bb_inv[drop]
            rest = np.empty((len(inverse) - (hi - lo),) * 2)  # inverse without rows and columns lo..hi-1
            for into, outof in ((slice(None, lo), slice(None, lo)), (slice(lo, None), slice(hi, None))):
                rest[into, :lo], rest[into, lo:] = inverse[outof, :lo], inverse[outof, hi:]
            rest -= h_rb @ _without(inverse[lo:hi], lo, hi, 1)
            state[0] = rest
            state[1] = _without(weight, lo, hi, 0) - h_rb @ weight[lo:hi]
        kept.pop(drop)
    return np.array(kept)


def _greedy_in_place(states: list, channels: int, keep_count: int) -> np.ndarray:
    """`_greedy` where every consumer reads one feature per channel (1x1 convs, Gemm, MatMul): the dropped
    channel is swapped to the end and the matrices shrink in place, instead of being copied without it at
    every elimination. With one feature per channel each update is a single product then a difference per
    element, as `_greedy` computes it, so every cost is the same number wherever its channel sits; ties
    (dead channels cost exactly 0) go to the lowest channel, as `_greedy`'s argmin over channels in order."""
    inverses = [np.array(inverse) for inverse, *_ in states]  # copies: shrunk in place
    weights = [np.array(weight) for _, weight, *_ in states]
    energies = [energy for *_, energy in states]
    order = np.arange(channels)  # the channel at each position
    scratch = np.empty((channels, channels))
    for size in range(channels, keep_count, -1):
        cost = np.zeros(size)
        pivots = []
        for inverse, weight, energy in zip(inverses, weights, energies):
            h_bb_inv = np.linalg.inv(np.diagonal(inverse)[:size].reshape(size, 1, 1))
            w_b = weight[:size].reshape(size, 1, -1)
            cost += np.einsum("cfo,cfg,cgo->c", w_b, h_bb_inv, w_b) / energy
            pivots.append(h_bb_inv)
        lowest = np.isnan(cost) if np.isnan(cost).any() else cost == cost.min()  # argmin's pick, NaN first
        drop = int(np.flatnonzero(lowest)[np.argmin(order[:size][lowest])])
        last = size - 1
        order[[drop, last]] = order[[last, drop]]
        for inverse, weight, h_bb_inv in zip(inverses, weights, pivots):
            inverse[[drop, last]] = inverse[[last, drop]]
            inverse[:, [drop, last]] = inverse[:, [last, drop]]
            weight[[drop, last]] = weight[[last, drop]]
            h_rb = inverse[:last, last:size] * h_bb_inv[drop, 0, 0]  # [last, 1]: H_rB (H_BB)^-1
            product = np.multiply(h_rb, inverse[last:size, :last], out=scratch[:last, :last])
            np.subtract(inverse[:last, :last], product, out=inverse[:last, :last])
            weight[:last] -= h_rb * weight[last:size]
    return np.sort(order[:keep_count])


def _without(matrix: np.ndarray, lo: int, hi: int, axis: int) -> np.ndarray:
    """`matrix` without the contiguous rows (axis 0) or columns (axis 1) lo..hi-1, as a new C-ordered array.
    Two slices copied, not a fancy-indexed gather (np.ix_ over the rest of an [n, n] inverse at each of
    hundreds of eliminations was most of the elimination's time); the same values in the same order."""
    keep = matrix.shape[axis] - (hi - lo)
    shape = (keep, matrix.shape[1]) if axis == 0 else (matrix.shape[0], keep)
    out = np.empty(shape, matrix.dtype)
    if axis == 0:
        out[:lo], out[lo:] = matrix[:lo], matrix[hi:]
    else:
        out[:, :lo], out[:, lo:] = matrix[:, :lo], matrix[:, hi:]
    return out
