"""Where a Conv (or a pool) reads its input: kernel, strides, dilations and padding, `auto_pad` resolved.

ONNX spells a Conv's padding two ways: explicit `pads` (begin of every
spatial axis, then end of every spatial axis) or `auto_pad` (SAME_UPPER,
SAME_LOWER, VALID), which leaves the numbers to the input size. Every rewrite
that reads a Conv's input positions (im2col for a least-squares fit, the
pixels a strided 1x1 conv reads) and the cost model's share of a window's
taps that land inside the input ask this one helper (here, in the ground
floor, so that passes and the cost model both can), so `auto_pad` is
handled once and the same way everywhere:

    SAME_*: out = ceil(in / s), total = max((out - 1) * s + (k - 1) * d + 1 - in, 0)
            SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the beginning
    VALID:  no padding
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .model import Model


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # ONNX order: begins, then ends; meaningful when auto_pad is NOTSET
    auto_pad: str = "NOTSET"

    @staticmethod
    def of(model: Model, conv: onnx.NodeProto) -> "ConvGeometry":
        """The geometry of a Conv (or ConvTranspose) with a constant or shape-declared weight."""
        return ConvGeometry.of_window(conv, tuple(int(d) for d in model.declared_shape(conv.input[1])[2:]))

    @staticmethod
    def of_window(node: onnx.NodeProto, kernel: tuple[int, ...]) -> "ConvGeometry":
        """The geometry of a Conv or pool whose window is `kernel`: the rest is in its attributes
        (an attribute given empty means its default, as absent)."""
        spatial = len(kernel)
        auto_pad = Model.attr(node, "auto_pad", "NOTSET")
        return ConvGeometry(kernel, tuple(Model.attr(node, "strides", None) or [1] * spatial),
                            tuple(Model.attr(node, "dilations", None) or [1] * spatial),
                            tuple(Model.attr(node, "pads", None) or [0] * (2 * spatial)),
                            auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad))

    def explicit_pads(self, in_size: tuple[int, ...]) -> tuple[int, ...]:
        """The padding (begins, then ends) the Conv applies to an input of spatial size `in_size`."""
        if self.auto_pad == "VALID":
            return (0,) * (2 * len(self.kernel))
        if not self.auto_pad.startswith("SAME"):
            return self.pads
        totals = [max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0)
                  for i, s, k, d in zip(in_size, self.strides, self.kernel, self.dilations)]
        small = [t // 2 for t in totals]
        large = [t - h for t, h in zip(totals, small)]
        return tuple(small + large) if self.auto_pad == "SAME_UPPER" else tuple(large + small)

    @property
    def pads_nothing(self) -> bool:
        """Whether no output pixel reads padding, whatever the input size: VALID, explicit zero pads,
        or SAME over a one-pixel window ((ceil(in / s) - 1) * s + 1 <= in: nothing to add)."""
        if self.auto_pad == "NOTSET":
            return not any(self.pads)
        return self.auto_pad == "VALID" or all(k == 1 for k in self.kernel)

    @property
    def is_identity_window(self) -> bool:
        """A 1x1 window with stride 1 and no padding: output pixel p reads input pixel p alone."""
        return all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides) and self.pads_nothing
