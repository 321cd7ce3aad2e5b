"""align_channels: remove a Conv's output channels down to a multiple of P, and refit its consumers.

Before:  x -> Conv(W: [C, Ci, k, k]) -> act -> Conv(V: [Co, C, kh, kw], b) -> y
After:   x -> Conv(W[K]: [C', Ci, k, k]) -> act -> Conv(V': [Co, C', kh, kw], b') -> y'

    C'     = floor(C / P) * P    (P: `multiple`, the target's parallelism factor)
    K      = the C' channels kept (in their original order), chosen by `importance`
    V', b' = argmin_{V, b} ||conv(x_K, V) + b - y||^2 + lambda ||V - V[:, K]||^2
             over calibration inputs: x_K are the kept channels as the rewritten
             network computes them, y is the consumer's output in the original
             network; lambda = `ridge` * mean diagonal of the (centred) Gram
             matrix of x_K's im2col features. A ridge that pulls towards the
             original weights rather than towards zero: as lambda grows the refit
             tends to "drop the channels and correct the bias", never to zero.

On an accelerator that computes P channels at once, C and ceil(C/P)*P
channels cost the same, so the C mod P channels over the last multiple are
paid as a whole extra pass; removing them saves that pass, where
pad_channels only makes the shape regular. Lossy: every application reports
its local error (see `output_tensor`).

The channels removed are removed from the whole channel group of the conv
(`channel_groups.plan_group`): from every producer of a tensor the channels
reach (a residual Add joins two producers, a squeeze-excitation gate its
expand conv: all drop the same channels, so a residual stage is narrowed as
a whole), from per-channel constants, depthwise convs and `group`, from
flattening Reshapes, and from the input weights of every consumer that mixes
channels (standard Convs, Gemm/MatMul behind a Flatten). A channel Concat,
a graph output or any op that cannot carry the channels declines the site.

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
`refit`: `lstsq` (default, the fit above) or `none` (the consumers' kept
input weights unchanged: the naive variant).

Consumers refitted: Conv (2-D, any kernel, stride, padding and dilation, by
im2col), Gemm and MatMul. A ConvTranspose consumer only drops its rows.
Consumers are refitted in dependency order: one that reads the output of
another consumer of the group (the SE reduce conv feeds the gate that the
projection reads) is fitted on activations of the network with the first
already refitted.

`calib` is the calibration split's inputs. Without it the pass falls back to
32 seeded random (standard normal) samples: enough to run, but channel
statistics of noise are not those of real data, and the selection and refit
are much better on real calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from ..errors import PassError
from ..ir import Model, seeded_inputs
from .base import Declined, Exactness, Param, Pass, Site
from .capture import Calibration, capture
from .channel_groups import (ChannelGroup, Decline, dense_convs, flattened_shape, plan_group, sink_weight_axis,
                             source_weight_axis, weight_rows)
from .graph_edit import constant_input, nodes_by_name, set_constant_input
from .least_squares import explicit_pads, patches, single_threaded_blas

IMPORTANCES = ("greedy", "energy", "l1", "first")
REFITS = ("lstsq", "none")
FALLBACK_SAMPLES = 32
_CHUNK_ELEMENTS = 1 << 22  # im2col elements per chunk when accumulating moments


class AlignChannels(Pass):
    name = "align_channels"
    exactness = Exactness.LOSSY
    summary = "remove a Conv's output channels down to a multiple of P, refitting its consumers by least squares"
    params = (
        Param("multiple", int, 32, "the parallelism factor P to align down to"),
        Param("importance", str, "greedy", "which channels to keep: greedy | energy | l1 | first"),
        Param("refit", str, "lstsq", "refit the consumers on calibration data: lstsq | none"),
        Param("ridge", float, 1e-3, "ridge strength, relative to the mean diagonal of the Gram matrix"),
    )

    def check_params(self, params: dict[str, Any]) -> None:
        if params["multiple"] < 2:
            raise PassError(f"{self.name}: 'multiple' must be at least 2, got {params['multiple']}")
        check_removal_params(self.name, params)

    def survey(self, model: Model, params: dict[str, Any]) -> Iterable[Site | Declined]:
        multiple = params["multiple"]
        for conv, channels in dense_convs(model):
            if channels is None:
                yield self.decline(conv.name, "its output channel count is unknown")
                continue
            keep = channels // multiple * multiple
            if channels % multiple == 0:
                yield self.decline(conv.name, f"{channels} channels are already a multiple of {multiple}")
                continue
            if keep == 0:
                yield self.decline(conv.name, f"aligning {channels} channels down to a multiple of {multiple} "
                                              f"would remove every channel (pad_channels aligns up)")
                continue
            try:
                group = plan_group(model, conv, removing=True)
            except Decline as reason:
                yield self.decline(conv.name, str(reason))
                continue
            yield self.site(conv.name, group.nodes, params, summary=removal_summary(group, channels, keep))

    def output_tensor(self, model: Model, site: Site) -> str:
        """The local error is measured on the output of the group's last consumer in topological
        order (for an IBN expand conv: the projection conv's output; for a residual stage: the
        first consumer after the stage). Consumers of the group before it are also refitted, and in
        chains they feed it, but a group with parallel consumers is measured on the last one only."""
        group = plan_group(model, model.node(site.anchor), removing=True)
        return model.node(group.ordered_sinks(model)[-1]).output[0]

    def preview(self, model: Model, site: Site) -> Model:
        """The narrowed graph without the data-aware choice and refit (same shapes, cheap)."""
        return remove_channels(model, site.anchor, self._keep(model, site), "first", "none")

    def rewrite(self, model: Model, site: Site, calib=None) -> Model:
        params = site.param_dict
        return remove_channels(model, site.anchor, self._keep(model, site), params["importance"], params["refit"],
                               params["ridge"], calib)

    def _keep(self, model: Model, site: Site) -> int:
        channels = model.declared_shape(model.node(site.anchor).input[1])[0]
        return channels // site.param_dict["multiple"] * site.param_dict["multiple"]


def check_removal_params(pass_name: str, params: dict[str, Any]) -> None:
    if params["importance"] not in IMPORTANCES:
        raise PassError(f"{pass_name}: importance must be one of {', '.join(IMPORTANCES)}, "
                        f"got '{params['importance']}'")
    if params["refit"] not in REFITS:
        raise PassError(f"{pass_name}: refit must be one of {', '.join(REFITS)}, got '{params['refit']}'")
    if not params["ridge"] >= 0:
        raise PassError(f"{pass_name}: ridge must be >= 0, got {params['ridge']}")


def removal_summary(group: ChannelGroup, channels: int, keep: int) -> str:
    return (f"{channels} -> {keep} channels; narrows {len(group.sources)} conv(s), "
            f"refits {len(group.sinks)} consumer(s)")


# -- the removal ----------------------------------------------------------------------------


def remove_channels(model: Model, anchor: str, keep_count: int, importance: str = "greedy",
                    refit: str = "lstsq", ridge: float = 1e-3, calib: Calibration | None = None) -> Model:
    """`model` with the output channels of conv `anchor` (and its whole channel group) cut to
    `keep_count`, chosen by `importance` and with consumers refitted by `refit` (see the module
    docstring). Raises PassError when the group cannot be narrowed."""
    with single_threaded_blas():
        return _remove_channels(model, anchor, keep_count, importance, refit, ridge, calib)


def _remove_channels(model: Model, anchor: str, keep_count: int, importance: str, refit: str, ridge: float,
                     calib: Calibration | None) -> Model:
    try:
        group = plan_group(model, model.node(anchor), removing=True)
    except Decline as reason:
        raise PassError(f"cannot remove channels of '{anchor}': {reason}") from None
    if not 0 < keep_count < group.channels:
        raise PassError(f"cannot keep {keep_count} of the {group.channels} channels of '{anchor}'")
    data_aware = importance in ("greedy", "energy") or refit == "lstsq"
    calib = fallback_calibration(model) if calib is None and data_aware else calib
    sinks = [_Sink.read(model, group, name) for name in group.ordered_sinks(model)]
    fitted = [s for s in sinks if s.refittable]  # a ConvTranspose consumer only drops its rows
    full: dict[str, _Moments] = {}  # per consumer, on the original network: every channel, every output
    targets: dict[str, np.ndarray] = {}
    if data_aware and fitted:
        original = capture(model, [t for s in fitted for t in (s.input, s.output)], calib)
        every = np.arange(group.channels)
        full = {s.name: s.moments(original[s.input], original[s.output], s.out_keep(every)) for s in fitted}
        targets = {s.name: original[s.output] for s in fitted}
    keep = _choose(model, group, fitted, full, keep_count, importance, ridge)

    refits: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    pending = fitted if refit == "lstsq" else []
    upstream = {s.name: _ancestors(model, s.input) for s in sinks}
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
            refits[sink.name] = moments.solve(sink.start(keep), ridge)
        pending = [s for s in pending if s not in ready]
    return _narrow(model, group, keep, refits)


def fallback_calibration(model: Model) -> Calibration:
    """Seeded random inputs when no calibration data is given: a batch of FALLBACK_SAMPLES when every
    input's batch dimension is free, else the model's own fixed batch."""
    free = all(not isinstance((model.declared_shape(vi.name) or (None,))[0], int) for vi in model.graph_inputs)
    if not free:
        return seeded_inputs(model)
    samples = [seeded_inputs(model, seed) for seed in range(FALLBACK_SAMPLES)]
    return {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}


def _ancestors(model: Model, tensor: str) -> set[str]:
    found, frontier = set(), [tensor]
    while frontier:
        node = model.producer(frontier.pop())
        if node is None or node.name in found:
            continue
        found.add(node.name)
        frontier.extend(i for i in node.input if i and not model.is_constant(i))
    return found


# -- consumers as linear maps ---------------------------------------------------------------


@dataclass
class _Sink:
    """A consumer of the group as a linear map: output rows = features @ weight + bias."""

    name: str
    op: str
    input: str  # the tensor it reads (the flattened one behind a Flatten)
    output: str
    rows_per_channel: int  # weight rows (along its input axis) per group channel
    features_per_channel: int  # columns of its design matrix per group channel (kh*kw for a Conv)
    weight: np.ndarray  # [features, outputs], Gemm's alpha applied
    bias: np.ndarray | None  # [outputs], Gemm's beta applied; None for MatMul
    conv: dict | None  # kernel, strides, pads, dilations, auto_pad of a Conv
    refittable: bool
    is_source: bool

    @staticmethod
    def read(model: Model, group: ChannelGroup, name: str) -> "_Sink":
        node = model.node(name)
        op, w = node.op_type, model.constant(node.input[1])
        b = model.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        rows = group.sinks[name]
        conv, refittable = None, True
        if op == "Conv":
            outputs = w.shape[0]
            matrix = w.reshape(outputs, -1).T
            features = int(np.prod(w.shape[2:]))
            bias = np.zeros(outputs, np.float64) if b is None else b.astype(np.float64)
            refittable = w.ndim == 4
            conv = {"kernel": w.shape[2:], "strides": model.attr(node, "strides", [1, 1]),
                    "pads": model.attr(node, "pads", [0, 0, 0, 0]), "dilations": model.attr(node, "dilations", [1, 1]),
                    "auto_pad": _text(model.attr(node, "auto_pad", "NOTSET"))}
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
        return _Sink(name, op, node.input[0], node.output[0], rows, features, matrix.astype(np.float64),
                     None if bias is None else np.asarray(bias, np.float64), conv, refittable,
                     name in group.sources)

    def columns(self, channels: np.ndarray) -> np.ndarray:
        return weight_rows(channels, self.features_per_channel)

    def out_keep(self, keep: np.ndarray) -> np.ndarray | None:
        """A consumer that also produces the group (a conv inside a residual stage) loses outputs too."""
        return keep if self.is_source else None

    def start(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The dropped-channel weights: what the ridge pulls the refit towards."""
        weight, bias = self.weight[self.columns(keep)], self.bias
        if self.is_source:
            weight = weight[:, keep]
            bias = None if bias is None else bias[keep]
        return weight, bias

    def design(self, x: np.ndarray, out_hw: tuple[int, int] | None) -> np.ndarray:
        """Rows of input features: im2col patches for a Conv, the flattened input otherwise."""
        if self.op != "Conv":
            return x.reshape(x.shape[0], -1)
        conv = self.conv
        pads = explicit_pads(conv["auto_pad"], conv["pads"], x.shape[2:], out_hw, conv["kernel"], conv["strides"],
                             conv["dilations"])
        return patches(x, conv["kernel"], conv["strides"], pads, conv["dilations"])

    def moments(self, x: np.ndarray, y: np.ndarray, out_keep: np.ndarray | None) -> "_Moments":
        """Sufficient statistics of (design rows of x, target rows of y), accumulated in chunks."""
        out_hw = tuple(y.shape[2:]) if self.op == "Conv" else None
        per_sample = int(np.prod(out_hw)) if out_hw else 1
        features = x.shape[1] * self.features_per_channel if self.op == "Conv" else x[0].size
        chunk = max(1, _CHUNK_ELEMENTS // max(1, per_sample * features))
        total = None
        for start in range(0, x.shape[0], chunk):
            rows = self.design(x[start:start + chunk], out_hw).astype(np.float64)
            target = _target_rows(y[start:start + chunk]).astype(np.float64)
            if out_keep is not None:
                target = target[:, out_keep]
            part = _Moments.of(rows, target, with_bias=self.bias is not None)
            total = part if total is None else total + part
        return total


def _target_rows(y: np.ndarray) -> np.ndarray:
    if y.ndim == 2:
        return y
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])  # [N, Co, H, W] -> [N*H*W, Co]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class _Moments:
    """Sums over design rows x and target rows y: n, sum x, sum y, x'x, x'y, sum |y|^2."""

    n: int
    sx: np.ndarray
    sy: np.ndarray
    xx: np.ndarray
    xy: np.ndarray
    yy: float
    with_bias: bool

    @staticmethod
    def of(x: np.ndarray, y: np.ndarray, with_bias: bool) -> "_Moments":
        return _Moments(len(x), x.sum(0), y.sum(0), x.T @ x, x.T @ y, float(np.sum(y * y)), with_bias)

    def __add__(self, other: "_Moments") -> "_Moments":
        return _Moments(self.n + other.n, self.sx + other.sx, self.sy + other.sy, self.xx + other.xx,
                        self.xy + other.xy, self.yy + other.yy, self.with_bias)

    def restrict(self, columns: np.ndarray, outputs: np.ndarray | None) -> "_Moments":
        """The moments of a subset of the features (and of the outputs)."""
        xy, sy = self.xy[columns], self.sy
        if outputs is not None:
            xy, sy = xy[:, outputs], sy[outputs]
        return _Moments(self.n, self.sx[columns], sy, self.xx[np.ix_(columns, columns)], xy, self.yy,
                        self.with_bias)

    def centred(self) -> tuple[np.ndarray, np.ndarray]:
        """(Gram, cross) of the centred rows when there is a bias to absorb the means, else raw."""
        if not self.with_bias:
            return self.xx, self.xy
        mx, my = self.sx / self.n, self.sy / self.n
        return self.xx - self.n * np.outer(mx, mx), self.xy - self.n * np.outer(mx, my)

    def penalty(self, gram: np.ndarray, ridge: float) -> float:
        scale = float(np.trace(gram)) / max(len(gram), 1)
        return ridge * scale if scale > 0 else ridge

    def solve(self, start: tuple[np.ndarray, np.ndarray | None], ridge: float) -> tuple[np.ndarray, np.ndarray | None]:
        """argmin ||x W + b - y||^2 + lam ||W - W0||^2 (b free), in float64."""
        w0, _ = start
        gram, cross = self.centred()
        lam = self.penalty(gram, ridge)
        lhs = gram + lam * np.eye(len(gram))
        rhs = cross + lam * w0
        try:
            weight = np.linalg.solve(lhs, rhs)
        except np.linalg.LinAlgError:
            weight = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        if not self.with_bias:
            return weight, None
        return weight, (self.sy - self.sx @ weight) / self.n


# -- choosing the channels ------------------------------------------------------------------


def _choose(model: Model, group: ChannelGroup, sinks: list[_Sink], full: dict[str, "_Moments"],
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


def _greedy(sinks: list[_Sink], moments: list[_Moments], channels: int, keep_count: int,
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
            block = np.arange(drop * f, (drop + 1) * f)
            rest = np.setdiff1d(np.arange(len(inverse)), block)
            h_rb = inverse[np.ix_(rest, block)] @ h_bb_inv[drop]
            state[0] = inverse[np.ix_(rest, rest)] - h_rb @ inverse[np.ix_(block, rest)]
            state[1] = weight[rest] - h_rb @ weight[block]
        kept.pop(drop)
    return np.array(kept)


# -- the new graph ---------------------------------------------------------------------------


def _narrow(model: Model, group: ChannelGroup, keep: np.ndarray,
            refits: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> Model:
    """`model` with only channels `keep` of the group; consumers in `refits` get those weights
    ([features, outputs] matrices and biases), the others their kept input weights."""
    graph = model.to_graphsurgeon()
    nodes = nodes_by_name(graph)
    for name in sorted(group.sources | set(group.sinks)):
        node = nodes[name]
        if name in refits:
            _write_refit(graph, node, *refits[name])
            continue
        weight, bias = constant_input(node, 1), constant_input(node, 2)
        if name in group.sources:
            weight = np.take(weight, keep, axis=source_weight_axis(node.op))
            if bias is not None:
                set_constant_input(graph, node, 2, np.take(bias, keep), "bias_narrowed")
        if name in group.sinks:
            weight = np.take(weight, weight_rows(keep, group.sinks[name]), axis=sink_weight_axis(node.op, node.attrs))
        set_constant_input(graph, node, 1, weight, "weight_narrowed")
    for name in sorted(group.depthwise):
        node = nodes[name]
        set_constant_input(graph, node, 1, np.take(constant_input(node, 1), keep, axis=0), "weight_narrowed")
        if constant_input(node, 2) is not None:
            set_constant_input(graph, node, 2, np.take(constant_input(node, 2), keep), "bias_narrowed")
        node.attrs["group"] = len(keep)
    for (name, index), (axis, _) in sorted(group.constants.items()):
        node = nodes[name]
        set_constant_input(graph, node, index, np.take(constant_input(node, index), keep, axis=axis),
                           f"in{index}_narrowed")
    for name, tensor in sorted(group.reshapes.items()):
        shape = flattened_shape(model, model.node(name), tensor, len(keep) - group.channels)
        set_constant_input(graph, nodes[name], 1, shape, "shape_narrowed")
    return model.from_graphsurgeon(graph)


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


