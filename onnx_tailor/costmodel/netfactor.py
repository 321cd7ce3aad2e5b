"""Training networks: how a whole network's run relates to the sum of its kernels' sweep times.

A measured target's kernels are timed inside small networks (`SweepEntry.network`),
and a model is predicted as the per-run overhead plus the sum of its kernels.
On cpu-ort that sum over-predicted every held-out model by a common factor
(1.06-1.15, median predicted / true, against truths taken minutes after the
sweep), and the factor changed from one sweep to the next: the small
networks time some kernels slower than the same kernels run inside a real
network (an 8-channel 1x1 conv at 160x160: 448 us in its sweep network,
230 us inside the PaddleOCR detector), most at full resolution.

So the same `costmodel measure` run that times the sweep also times whole
training networks, seeded MobileNet-like chains of the sweep's kernel kinds
(convs, inverted bottlenecks, depthwise-separable pairs, squeeze-excitation
gates, residual adds; ReLU, ReLU6 or HardSwish), at several depths and input
sizes, square and text-line (`training_network_ids`). Each is timed whole
the way the fidelity bench times its truths (`measure.interleaved_medians`,
the calling thread's CPU time) and filed in the measurements CSV under its
id, e.g. `network:depth=9,hw=160,seed=4` (`network_id`): the id alone
rebuilds the network (`build_network`), on any machine, as a sweep id
rebuilds its kernel. No held-out model of any bench is among them, nor is
any shape taken from one.

Fitting (`regressor.CostModel.fit`) predicts each training network with the
regressors just fitted, and scales every kernel by the median over the
networks of (whole run - overhead) / kernel sum: a factor learned only
from networks measured with the sweep, in the same run, so the host's
speed, which drifts by several percent within half an hour, is the same for
both. A device out of reach gets them the same way: `costmodel sweep`
writes the networks into the sweep folder (`write_training_networks`),
`profile_on_device.py` times them there in interleaved rounds, and
`costmodel measure --profiles` files them. A CSV without these rows
(measured before them, or brought from elsewhere) keeps the factor 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx

from ..ir import Model
from .measure import interleaved_medians
from .sweep import GraphBuilder
from .target import Target

NETWORK_OP = "network"
# Network ids the measure run times: input sizes (height, width) and depths (blocks after the stem).
# Square inputs as classifiers and detectors take them, text-line ones as OCR models do.
TRAINING_SIZES = ((32, 32), (64, 64), (96, 96), (128, 128), (160, 160), (224, 224), (320, 320),
                  (32, 128), (48, 192), (48, 320))
TRAINING_DEPTHS = (3, 6, 9, 14)
TRAINING_COUNT = 40  # every size of TRAINING_SIZES at every depth of TRAINING_DEPTHS once
MAX_NETWORK_MACS = 600_000_000  # blocks stop once a network would pass this (keeps each run under ~50 ms)


def network_id(seed: int, hw: int, depth: int, w: int | None = None) -> str:
    """The id of the training network `build_network` makes from these; `w` only when it differs from `hw`."""
    params = {"depth": depth, "hw": hw, "seed": seed, **({"w": w} if w not in (None, hw) else {})}
    return f"{NETWORK_OP}:" + ",".join(f"{k}={v}" for k, v in sorted(params.items()))


def is_network_id(entry_id: str) -> bool:
    return entry_id.partition(":")[0] == NETWORK_OP


def parse_network_id(entry_id: str) -> dict[str, int]:
    """{depth, hw, seed, w} of a network id; ValueError when it is not one."""
    op, sep, rest = entry_id.partition(":")
    try:
        params = {k: int(v) for k, _, v in (item.partition("=") for item in rest.split(","))}
    except ValueError:
        params = {}
    if op != NETWORK_OP or not sep or set(params) - {"w"} != {"depth", "hw", "seed"} \
            or min(params.values()) < 1 or params["depth"] > 64 or max(params["hw"], params.get("w", 1)) > 1024:
        raise ValueError(f"not a training network id: {entry_id!r}")
    params.setdefault("w", params["hw"])
    return params


def training_network_ids(count: int = TRAINING_COUNT) -> list[str]:
    """`count` network ids, every size of `TRAINING_SIZES` and depth of `TRAINING_DEPTHS` in turn (seeds 1..)."""
    ids = []
    for index in range(count):
        h, w = TRAINING_SIZES[index % len(TRAINING_SIZES)]
        ids.append(network_id(index + 1, h, TRAINING_DEPTHS[(index * 3 + index // len(TRAINING_SIZES))
                                                            % len(TRAINING_DEPTHS)], w))
    return ids


class _Builder:
    """A network being built: the current tensor, its channels and map size, and the MACs so far."""

    def __init__(self, rng, activation: str, c: int, h: int, w: int):
        self.g, self.rng, self.act = GraphBuilder(rng), rng, activation
        self.x, self.c, self.h, self.w, self.macs = "x", c, h, w, 0

    def conv(self, x: str, ci: int, co: int, k: int, s: int, act: str, group: int = 1) -> str:
        h, w = math.ceil(self.h / s), math.ceil(self.w / s)
        self.macs += h * w * co * (ci // group) * k * k
        y = self.g.add("Conv", [x, self.g.weight(co, ci // group, k, k), self.g.weight(co)], kernel_shape=[k, k],
                       strides=[s, s], pads=[k // 2] * 4, group=group)
        return self.g.activation(y, act)

    def excitation(self, x: str, c: int) -> str:
        """A squeeze-excitation gate: GAP, 1x1 conv to a quarter, ReLU, 1x1 conv back, HardSigmoid, Mul."""
        squeezed = self.g.add("GlobalAveragePool", [x])
        mid = max(8, c // 4)
        hidden = self.g.add("Relu", [self.g.add("Conv", [squeezed, self.g.weight(mid, c, 1, 1), self.g.weight(mid)])])
        gate = self.g.add("Conv", [hidden, self.g.weight(c, mid, 1, 1), self.g.weight(c)])
        return self.g.add("Mul", [x, self.g.add("HardSigmoid", [gate], alpha=1 / 6, beta=0.5)])

    def block(self, kind: str, co: int, k: int, s: int, excite: bool) -> None:
        x, ci, act = self.x, self.c, self.act
        if kind == "ibn":
            hidden = ci * int(self.rng.choice((3, 4, 6)))
            y = self.conv(x, ci, hidden, 1, 1, act)
            y = self.conv(y, hidden, hidden, k, s, act, group=hidden)
            self.h, self.w = math.ceil(self.h / s), math.ceil(self.w / s)
            y = self.excitation(y, hidden) if excite else y
            y = self.conv(y, hidden, co, 1, 1, "none")
        elif kind == "separable":
            y = self.conv(x, ci, ci, k, s, act, group=ci)
            self.h, self.w = math.ceil(self.h / s), math.ceil(self.w / s)
            y = self.conv(self.excitation(y, ci) if excite else y, ci, co, 1, 1, act)
        else:
            y = self.conv(x, ci, co, k, s, act)
            self.h, self.w = math.ceil(self.h / s), math.ceil(self.w / s)
        if s == 1 and ci == co and kind != "conv":
            y = self.g.add("Add", [y, x])
        self.x, self.c = y, co


def build_network(entry_id: str) -> onnx.ModelProto:
    """The training network of a `network_id`: a stem conv (stride 2), then `depth` blocks (inverted
    bottlenecks, depthwise-separable pairs or plain convs; 3x3 or 5x5; some with a squeeze-excitation
    gate; residual adds where shapes allow), striding down towards 4-7 rows, channels widening as the map
    shrinks; half of them end in a classifier head (1x1 conv, global pool, Gemm), the rest at the last map.
    Every choice is drawn from `seed`; blocks stop before the network passes `MAX_NETWORK_MACS`."""
    p = parse_network_id(entry_id)
    rng = np.random.default_rng(p["seed"])
    activation = str(rng.choice(("relu", "relu6", "hardswish")))
    net = _Builder(rng, activation, 3, p["hw"], p["w"])
    stem = int(rng.choice((8, 16, 24, 32)))
    net.x, net.c = net.conv("x", 3, stem, 3, 2, activation), stem
    net.h, net.w = math.ceil(net.h / 2), math.ceil(net.w / 2)
    strides_left = max(0, int(math.log2(max(min(net.h, net.w), 1) / 5)))
    for index in range(p["depth"]):
        blocks_left = p["depth"] - index
        s = 2 if strides_left and rng.random() < strides_left / blocks_left else 1
        strides_left -= s == 2
        cap = min(640, max(32, int(1280 * 7 / max(net.h, 1))))
        co = net.c if s == 1 and rng.random() < 0.5 else int(min(cap, max(8, net.c * rng.uniform(1.2, 2.2))))
        co = co - co % 8 if rng.random() < 0.5 else co
        kind = str(rng.choice(("ibn", "ibn", "separable", "conv")))
        k, excite = int(rng.choice((3, 3, 5))), bool(rng.random() < 0.25)
        graph, before = net.g.mark(), (net.macs, net.x, net.c, net.h, net.w)
        net.block(kind, max(co, 3), k, s, excite)
        if net.macs > MAX_NETWORK_MACS and index:
            net.g.rewind(graph)
            net.macs, net.x, net.c, net.h, net.w = before
            break
    out = net.x
    if rng.random() < 0.5:
        wide = min(1280, net.c * 4)
        pooled = net.g.add("GlobalAveragePool", [net.conv(out, net.c, wide, 1, 1, activation)])
        flat = net.g.add("Flatten", [pooled], axis=1)
        classes = int(rng.choice((10, 100, 1000)))
        out = net.g.add("Gemm", [flat, net.g.weight(classes, wide), net.g.weight(classes)], transB=1)
    return net.g.model_proto({"x": [1, 3, p["hw"], p["w"]]}, out)


def network_model(entry_id: str) -> Model:
    return Model(build_network(entry_id))


def measure_networks(target: Target, ids: list[str] | None = None) -> list[tuple[str, float]]:
    """(id, whole-run latency) of each training network on `target` (default: `training_network_ids()`), on
    the thread's CPU time in interleaved rounds, as the fidelity bench times its truths (10-20 s idle)."""
    ids = training_network_ids() if ids is None else ids
    _, cpu = interleaved_medians([network_model(i) for i in ids], target)
    return list(zip(ids, cpu))


def write_training_networks(folder: Path, ids: list[str] | None = None) -> list[str]:
    """Write each training network (default: `training_network_ids()`) into a sweep folder that `write_sweep`
    wrote, and list them in its manifest ("training_networks": id and file), for `profile_on_device.py`."""
    ids = training_network_ids() if ids is None else ids
    manifest_path = Path(folder) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["training_networks"] = []
    for index, entry_id in enumerate(ids):
        name = f"training_network_{index:02d}.onnx"
        onnx.save(build_network(entry_id), str(Path(folder) / name))
        manifest["training_networks"].append({"id": entry_id, "file": name})
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return ids
