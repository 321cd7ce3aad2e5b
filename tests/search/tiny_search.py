"""`run`: optimize on the tiny model with random data and the cosine fidelity metric, options overridable."""

from __future__ import annotations

from onnx_tailor.search import optimize

PASSES = ["fuse_ibn_expansion", "densify_depthwise", "pad_channels"]


def run(model, **kwargs):
    options = dict(target="npu-p32", data="random", metric="cosine", max_drop="0.05", passes=PASSES)
    options.update(kwargs)
    return optimize(model, **options)
