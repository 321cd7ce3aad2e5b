"""Least-squares weight fitting for data-aware rewrites.

A conv is a linear map of its input patches, so fitting its weights to
reproduce a target tensor is a ridge regression: rows are output positions,
features are the KxK x Cin patch (plus 1 for the bias). The normal equations
are accumulated one chunk of images at a time, so memory stays bounded
whatever the calibration set's size.
"""

from __future__ import annotations

import contextlib

import numpy as np


def single_threaded_blas():
    """A context with one BLAS thread. The Gram matrices here are small (a few thousand
    features at most): one thread computes them as fast, repeatably, and without the
    spin-waiting multi-threaded OpenBLAS shows on a busy machine (seconds instead of
    milliseconds)."""
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def explicit_pads(auto_pad: str, pads, in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: tuple[int, int],
                  strides: tuple[int, int], dilations: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) padding of a Conv, whether given or implied by auto_pad."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((o - 1) * s + (k - 1) * d + 1 - i, 0)
                 for o, s, k, d, i in zip(out_hw, strides, kernel, dilations, in_hw)]
        small = [t // 2 for t in total]
        if auto_pad == "SAME_UPPER":
            return small[0], small[1], total[0] - small[0], total[1] - small[1]
        return total[0] - small[0], total[1] - small[1], small[0], small[1]
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    top, left, bottom, right = pads
    return top, left, bottom, right


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


def rows(y: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N * H * W, C], matching `patches`' row order."""
    return y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1])


def fit_conv(x: np.ndarray, y: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int],
             pads: tuple[int, int, int, int], ridge: float = 1e-4, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Weights [Co, Ci, Kh, Kw] and bias [Co] of the conv that maps x to y best in least squares.

    `ridge` is relative to the mean diagonal of the Gram matrix, so it means the
    same at any activation scale.
    """
    with single_threaded_blas():
        return _fit_conv(x, y, kernel, strides, pads, ridge, chunk)


def _fit_conv(x, y, kernel, strides, pads, ridge, chunk):
    features = x.shape[1] * kernel[0] * kernel[1] + 1
    gram = np.zeros((features, features))
    cross = np.zeros((features, y.shape[1]))
    for start in range(0, x.shape[0], chunk):
        a = patches(x[start:start + chunk].astype(np.float64), kernel, strides, pads)
        a = np.hstack([a, np.ones((a.shape[0], 1))])
        b = rows(y[start:start + chunk].astype(np.float64))
        gram += a.T @ a
        cross += a.T @ b
    gram += np.eye(features) * ridge * max(np.trace(gram) / features, 1e-12)
    solution = np.linalg.solve(gram, cross)  # [features, Co]
    weight = solution[:-1].T.reshape(y.shape[1], x.shape[1], kernel[0], kernel[1])
    return weight.astype(np.float32), solution[-1].astype(np.float32)
