"""Train and export the demo model ``digits_mbv2.onnx`` and its evaluation set.

This is a dev-only tool: torch is NOT a dependency of onnx-tailor and is only
needed to regenerate the committed files in this directory.  To rebuild them::

    pip install torch==2.13.0 && python models/make_models.py

It writes, next to this script:

* ``digits_mbv2.onnx``  -- a small MobileNetV2-style classifier (opset 17,
  input ``input`` [batch, 1, 32, 32], output ``logits`` [batch, 10], dynamic
  batch) with its BatchNormalization nodes deliberately left unfolded, so that
  the ``fold_batchnorm`` pass has real sites to work on;
* ``digits_eval.npz``   -- the held-out evaluation set, already preprocessed:
  ``input`` float32 [360, 1, 32, 32] and ``labels`` int64 [360].

Data: scikit-learn's bundled ``load_digits()`` (8x8 grayscale, values 0..16,
1797 samples; BSD-licensed, ships inside scikit-learn, no download).

Everything is seeded and runs single-process with 2 threads, so a rerun on the
same software stack reproduces the same weights.  It takes a few minutes on
2 CPU cores.  See README.md for the architecture and the measured numbers.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
N_EVAL = 360  # held-out samples (20% of 1797, stratified)
IMAGE_SIZE = 32  # 8x8 digits are upsampled to this resolution
EPOCHS = 40
BATCH_SIZE = 64
LR = 3e-3
WEIGHT_DECAY = 1e-4
MAX_SHIFT = 2  # augmentation: random translation of up to +-2 pixels at 32x32
OPSET = 17

OUT_DIR = Path(__file__).resolve().parent
ONNX_PATH = OUT_DIR / "digits_mbv2.onnx"
EVAL_PATH = OUT_DIR / "digits_eval.npz"

# Inverted-bottleneck blocks:
#   (in, expand, out, kernel, stride, activation, squeeze-excite)
# Channel counts are deliberately a mix of multiples of 8 and awkward values
# (12, 20, 36, 44, 60, 108, 132, 180 ...) so that channel-padding / tiling
# passes see both aligned and unaligned tensors.  Residual Add is used
# whenever stride == 1 and in == out.
BLOCKS = [
    (12, 36, 12, 3, 1, "relu6", False),  # 32x32, x3, residual
    (12, 48, 20, 3, 2, "relu6", False),  # 32 -> 16, x4
    (20, 60, 20, 3, 1, "relu6", False),  # 16x16, x3, residual
    (20, 120, 36, 5, 2, "relu6", False),  # 16 -> 8, x6
    (36, 108, 36, 3, 1, "hswish", False),  # 8x8, x3, residual
    (36, 144, 44, 5, 1, "hswish", True),  # 8x8, x4, SE
    (44, 132, 44, 5, 1, "hswish", True),  # 8x8, x3, SE, residual
    (44, 176, 60, 5, 2, "hswish", False),  # 8 -> 4, x4
    (60, 180, 60, 3, 1, "hswish", True),  # 4x4, x3, SE, residual
]
STEM_CHANNELS = 12
HEAD_CHANNELS = 120
NUM_CLASSES = 10


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
def make_act(name: str) -> nn.Module:
    # ReLU6 exports as Clip(0, 6); Hardswish as the opset-14 HardSwish op.
    return {"relu6": nn.ReLU6, "hswish": nn.Hardswish}[name]()


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    # bias=False: the BatchNormalization that follows carries the shift, which
    # is exactly the Conv -> BN pattern fold_batchnorm is meant to rewrite.
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class SqueezeExcite(nn.Module):
    """GlobalAvgPool -> 1x1 conv -> ReLU -> 1x1 conv -> HardSigmoid -> Mul."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        squeezed = channels // reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return x * s


class InvertedResidual(nn.Module):
    """1x1 expand -> KxK depthwise -> [SE] -> 1x1 project (linear), + skip."""

    def __init__(self, cin: int, cexp: int, cout: int, k: int, stride: int, act: str, se: bool):
        super().__init__()
        layers: list[nn.Module] = []
        layers += conv_bn(cin, cexp, 1) + [make_act(act)]
        layers += conv_bn(cexp, cexp, k, stride=stride, groups=cexp) + [make_act(act)]
        if se:
            layers.append(SqueezeExcite(cexp))
        layers += conv_bn(cexp, cout, 1)  # no activation: linear bottleneck
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class DigitsMBV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, STEM_CHANNELS, 3), nn.ReLU6())
        self.blocks = nn.Sequential(*(InvertedResidual(*b) for b in BLOCKS))
        last = BLOCKS[-1][2]
        self.head = nn.Sequential(*conv_bn(last, HEAD_CHANNELS, 1), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one forward pass."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            total += out.numel() * (mod.in_channels // mod.groups) * k
        else:
            total += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def load_data():
    """Split, scale, normalise and upsample the digits; returns float32 NCHW tensors."""
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # 0..16 -> [0, 1]
    labels = digits.target.astype(np.int64)
    x_tr, x_ev, y_tr, y_ev = train_test_split(
        images, labels, test_size=N_EVAL, stratify=labels, random_state=SEED
    )
    # Statistics from the training portion only, so the eval set stays unseen.
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def prep(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy((x - mean) / std).unsqueeze(1)  # [N, 1, 8, 8]
        t = F.interpolate(t, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
        return t.contiguous()

    return prep(x_tr), torch.from_numpy(y_tr), prep(x_ev), torch.from_numpy(y_ev), mean, std


def random_shift(x: torch.Tensor, fill: float, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to MAX_SHIFT pixels, padding with background."""
    n, _, h, w = x.shape
    padded = F.pad(x, [MAX_SHIFT] * 4, value=fill)
    offs = torch.randint(0, 2 * MAX_SHIFT + 1, (n, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs)])


# --------------------------------------------------------------------------
# Training / export / verification
# --------------------------------------------------------------------------
def evaluate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def train(model: nn.Module, x_tr, y_tr, x_ev, y_ev, fill: float) -> float:
    gen = torch.Generator().manual_seed(SEED)  # drives shuffling and augmentation
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(x_tr) + BATCH_SIZE - 1) // BATCH_SIZE
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=EPOCHS * steps_per_epoch, pct_start=0.15, anneal_strategy="cos"
    )
    # channels_last roughly halves CPU training time for the depthwise-heavy
    # network; it changes only memory layout, not the exported graph.
    model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total_loss = 0.0
        for i in range(0, len(x_tr), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            xb = random_shift(x_tr[idx], fill, gen).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y_tr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            acc = (evaluate(model, x_ev).argmax(1) == y_ev).float().mean().item()
            print(f"  epoch {epoch + 1:3d}  loss {total_loss / len(x_tr):.4f}  eval acc {acc:.4f}"
                  f"  ({time.perf_counter() - start:.0f}s)")
    model.to(memory_format=torch.contiguous_format)
    return time.perf_counter() - start


def export_onnx(model: nn.Module) -> None:
    model.eval()
    dummy = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    # The legacy TorchScript exporter fuses Conv+BN in eval mode (its "eval
    # peephole") and constant folding would do the same; TrainingMode.PRESERVE
    # with the module in eval mode skips the fusion while still emitting
    # inference-mode BatchNormalization, and do_constant_folding=False keeps
    # everything else as written.  The legacy exporter is used on purpose, so
    # its DeprecationWarning is silenced.
    warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
    torch.onnx.export(
        model,
        (dummy,),
        str(ONNX_PATH),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE,
    )
    import onnx

    proto = onnx.load(str(ONNX_PATH))
    proto.graph.name = "digits_mbv2"
    proto.doc_string = "MobileNetV2-style digit classifier trained by models/make_models.py (onnx-tailor demo)"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(ONNX_PATH))


def save_npz_reproducibly(path: Path, **arrays: np.ndarray) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps so the sha256 is stable."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def verify_onnx(model: nn.Module, x_ev: torch.Tensor, y_ev: torch.Tensor) -> None:
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(ONNX_PATH))
    ops = Counter(n.op_type for n in proto.graph.node)
    n_bn = ops["BatchNormalization"]
    assert n_bn > 0, "exporter folded BatchNormalization; fold_batchnorm would have nothing to do"
    print(f"ONNX opset {proto.opset_import[0].version}, {len(proto.graph.node)} nodes, "
          f"{n_bn} BatchNormalization")
    print("  op histogram:", dict(sorted(ops.items(), key=lambda kv: -kv[1])))

    so = ort.SessionOptions()
    # No ORT graph rewrites: compare against the graph exactly as exported.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(ONNX_PATH), so, providers=["CPUExecutionProvider"])
    for t in [*sess.get_inputs(), *sess.get_outputs()]:
        print(f"  {t.name}: {t.shape} {t.type}")
    ort_logits = sess.run(["logits"], {"input": x_ev.numpy()})[0]
    torch_logits = evaluate(model, x_ev).numpy()
    diff = float(np.abs(ort_logits - torch_logits).max())
    acc = float((ort_logits.argmax(1) == y_ev.numpy()).mean())
    print(f"  max |onnxruntime - torch| on eval set: {diff:.3g}")
    print(f"  onnxruntime top-1 on the {len(y_ev)} held-out digits: {acc:.4f} "
          f"({int(round(acc * len(y_ev)))}/{len(y_ev)})")
    assert diff < 1e-4, f"onnxruntime disagrees with torch by {diff}"


def print_block_table() -> None:
    print("| # | in | expand | out | kernel | stride | act | SE | residual |")
    print("|---|----|--------|-----|--------|--------|-----|----|----------|")
    for i, (cin, cexp, cout, k, s, act, se) in enumerate(BLOCKS):
        res = s == 1 and cin == cout
        print(f"| {i} | {cin} | {cexp} | {cout} | {k} | {s} | {act} | {'yes' if se else '-'} | "
              f"{'yes' if res else '-'} |")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    t0 = time.perf_counter()
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    x_tr, y_tr, x_ev, y_ev, mean, std = load_data()
    fill = -mean / std  # a blank (0) pixel after normalisation
    print(f"train {tuple(x_tr.shape)}, eval {tuple(x_ev.shape)}; "
          f"normalise with mean={mean:.6f} std={std:.6f} (pixel/16 scale)")

    model = DigitsMBV2()
    n_params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model.eval(), torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    print(f"digits_mbv2: {n_params} parameters, {macs / 1e6:.2f} M MACs per image")
    print_block_table()

    train_s = train(model, x_tr, y_tr, x_ev, y_ev, fill)
    print(f"training took {train_s:.1f}s")

    export_onnx(model)
    save_npz_reproducibly(EVAL_PATH, input=x_ev.numpy().astype(np.float32), labels=y_ev.numpy().astype(np.int64))
    verify_onnx(model, x_ev, y_ev)

    for p in (ONNX_PATH, EVAL_PATH):
        print(f"  {p.name}: {p.stat().st_size} bytes, sha256 {sha256(p)}")
    print(f"total {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
