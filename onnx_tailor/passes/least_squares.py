"""Least-squares weight fitting for data-aware rewrites: one ridge solver, one im2col.

A conv is a linear map of its input patches, so fitting its weights to
reproduce a target tensor is a ridge regression: rows are output positions,
features the KxK x Cin patch. `Moments` holds the sufficient statistics of
such a regression, accumulated one chunk of samples at a time so that memory
stays bounded whatever the calibration set's size, and solves

    argmin_{W, b} ||X W + b - Y||^2 + lam ||W - W0||^2      (b free, not penalised)

with lam = `ridge` x the mean diagonal of the centred Gram matrix, so that a
ridge means the same at any activation scale. W0 (the prior) is zero for a
fresh fit and the original weights for a refit, which then tends to "keep
the weights and correct the bias" rather than to zero as lam grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController  # a dependency of scikit-learn, so always installed

from ..ir.conv_geometry import ConvGeometry

CHUNK_ELEMENTS = 1 << 22  # design-matrix elements per chunk when accumulating moments


def single_threaded_blas():
    """A context with one BLAS thread. The Gram matrices here are small (a few thousand
    features at most): one thread computes them as fast, repeatably, and without the
    spin-waiting multi-threaded OpenBLAS shows on a busy machine (seconds instead of
    milliseconds)."""
    return _blas().limit(limits=1, user_api="blas")


@cache
def _blas() -> ThreadpoolController:
    # Finding the loaded BLAS libraries costs milliseconds, once per call of `threadpool_limits`: every preview
    # of a channel removal paid it. They are loaded with numpy, before the first call.
    return ThreadpoolController()


def patches(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int], pads: tuple[int, int, int, int],
            dilations: tuple[int, int] = (1, 1)) -> np.ndarray:
    """im2col: [N, C, H, W] -> [N * Ho * Wo, C * Kh * Kw], in ONNX Conv's weight order (C, Kh, Kw)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    top, left, bottom, right = pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    wo = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    cols = np.empty((n, ho, wo, c, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            cols[..., i, j] = window.transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, c * kh * kw)


def design(x: np.ndarray, geometry: ConvGeometry | None) -> np.ndarray:
    """Rows of input features: a 2-D conv's im2col patches, or the flattened samples of a matrix's input."""
    if geometry is None:
        return x.reshape(x.shape[0], -1)
    return patches(x, geometry.kernel, geometry.strides, geometry.explicit_pads(x.shape[2:]), geometry.dilations)


def rows(y: np.ndarray) -> np.ndarray:
    """Target rows matching `design`'s: [N, C, *spatial] -> [N * prod(spatial), C]; a matrix stays as it is."""
    return y if y.ndim == 2 else np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])


@dataclass
class Moments:
    """Sums over design rows x and target rows y: n, sum x, sum y, x'x, x'y, sum |y|^2."""

    n: int
    sx: np.ndarray
    sy: np.ndarray
    xx: np.ndarray
    xy: np.ndarray
    yy: float
    with_bias: bool

    @staticmethod
    def of(x: np.ndarray, y: np.ndarray, with_bias: bool) -> "Moments":
        return Moments(len(x), x.sum(0), y.sum(0), x.T @ x, x.T @ y, float(np.sum(y * y)), with_bias)

    @staticmethod
    def accumulate(x: np.ndarray, y: np.ndarray, geometry: ConvGeometry | None, with_bias: bool = True,
                   outputs: np.ndarray | None = None) -> "Moments":
        """The moments of (design rows of x, target rows of y[:, outputs]), a chunk of samples at a time."""
        features = design(x[:1], geometry).shape[1]
        per_sample = max(1, rows(y[:1]).shape[0])
        chunk = max(1, CHUNK_ELEMENTS // max(1, per_sample * features))
        total = None
        for start in range(0, x.shape[0], chunk):
            a = design(x[start:start + chunk], geometry).astype(np.float64)
            b = rows(y[start:start + chunk]).astype(np.float64)
            part = Moments.of(a, b if outputs is None else b[:, outputs], with_bias)
            total = part if total is None else total + part
        return total

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.n + other.n, self.sx + other.sx, self.sy + other.sy, self.xx + other.xx,
                       self.xy + other.xy, self.yy + other.yy, self.with_bias)

    def restrict(self, columns: np.ndarray, outputs: np.ndarray | None) -> "Moments":
        """The moments of a subset of the features (and of the outputs)."""
        xy, sy = self.xy[columns], self.sy
        if outputs is not None:
            xy, sy = xy[:, outputs], sy[outputs]
        return Moments(self.n, self.sx[columns], sy, self.xx[np.ix_(columns, columns)], xy, self.yy, self.with_bias)

    def centred(self) -> tuple[np.ndarray, np.ndarray]:
        """(Gram, cross) of the centred rows when there is a bias to absorb the means, else raw."""
        if not self.with_bias:
            return self.xx, self.xy
        mx, my = self.sx / self.n, self.sy / self.n
        return self.xx - self.n * np.outer(mx, mx), self.xy - self.n * np.outer(mx, my)

    @staticmethod
    def penalty(gram: np.ndarray, ridge: float) -> float:
        """lam: `ridge` relative to the mean diagonal of `gram` (absolute when the Gram matrix is zero)."""
        scale = float(np.trace(gram)) / max(len(gram), 1)
        return ridge * scale if scale > 0 else ridge

    def solve(self, ridge: float, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(W [features, outputs], b [outputs] or None without a bias): the ridge fit above, in float64."""
        gram, cross = self.centred()
        lam = self.penalty(gram, ridge)
        lhs = gram + lam * np.eye(len(gram))
        rhs = cross if prior is None else cross + lam * prior
        try:
            weight = np.linalg.solve(lhs, rhs)
        except np.linalg.LinAlgError:
            weight = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
        if not self.with_bias:
            return weight, None
        return weight, (self.sy - self.sx @ weight) / self.n


def fit_conv(x: np.ndarray, y: np.ndarray, geometry: ConvGeometry, ridge: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Weights [Co, Ci, Kh, Kw] and bias [Co] (float32) of the conv of `geometry` that maps x to y best."""
    with single_threaded_blas():
        weight, bias = Moments.accumulate(x, y, geometry).solve(ridge)
    return weight.T.reshape(y.shape[1], x.shape[1], *geometry.kernel).astype(np.float32), bias.astype(np.float32)
