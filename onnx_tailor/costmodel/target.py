"""Targets: the named hardware profiles a model is scored for.

A target is a JSON profile. Built-in ones live in `costmodel/targets/`
(`npu-p16`, `npu-p32`, `npu-p64`: the simulated NPU of docs/npu-target.md;
`cpu-ort`: onnxruntime on this machine's CPU); a user profile is loaded from
a path. Three kinds:
- `npu`: simulated; its parameters are the machine of docs/npu-target.md, and the
  simulator (`costmodel.npu`) is its ground truth.
- `ort`: measured with onnxruntime on an execution provider of this machine.
- `import`: measurements brought from a device we cannot run; the profile
  embeds them (see `costmodel fit`).
Every profile may name a `measurements` CSV (relative to the profile) that
the learned cost model trains on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from ..errors import TailorError

DEFAULT_TARGET = "npu-p32"


class TargetError(TailorError):
    """Unknown target name, or a profile file that is not a valid profile."""


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # npu | ort | import
    description: str = ""
    parallelism: int = 8  # P: channels computed at once
    vector_lanes: int = 2  # V = P / 4 on the NPU
    clock_hz: float = 1e9
    sram_bytes: int = 0
    dram_bytes_per_cycle: float = 16.0
    dispatch_cycles: int = 0
    element_bytes: int = 4
    fusable_activations: tuple[str, ...] = ()
    grouped_activations: tuple[str, ...] = ()  # spelled-out activations run as one kernel (`costmodel.kernels`)
    execution_provider: str = "CPUExecutionProvider"
    threads: int = 1
    measurements: str | None = None  # CSV path, relative to the profile file
    source: Path | None = field(default=None, compare=False)

    @property
    def simulated(self) -> bool:
        return self.kind == "npu"

    @property
    def precision(self) -> str:
        """What the target computes in: int8 for one-byte elements (the npu-* targets), else fp32."""
        return "int8" if self.element_bytes == 1 else "fp32"

    def to_dict(self) -> dict:
        """JSON-ready: every profile field (`onnx-tailor targets --json`), what accuracy is judged in as
        `precision`, and the profile's path as `profile`."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "source"}
        row["fusable_activations"] = list(self.fusable_activations)
        row["grouped_activations"] = list(self.grouped_activations)
        row["precision"] = self.precision
        row["profile"] = str(self.source) if self.source else None
        return row

    def measurements_path(self) -> Path | None:
        if not self.measurements:
            return None
        base = self.source.parent if self.source else Path(".")
        return base / self.measurements


_REQUIRED = {
    "npu": ("parallelism", "vector_lanes", "clock_hz", "sram_bytes", "dram_bytes_per_cycle", "dispatch_cycles"),
    "ort": (),  # execution_provider defaults to the CPU
    "import": ("measurements",),
}
# Each field's type and range: (kind, low, high). "int" takes an integral JSON number (16, or 16.0), never
# 16.5; "number" a finite one (JSON's NaN and 1e400, which reads as infinity, are refused). The upper
# bounds are far past any real device and keep the simulator's and onnxruntime's sizes sane (a profile
# with 100000 threads hung `costmodel measure`).
_FIELDS = {
    "name": ("str",), "kind": ("str",), "description": ("str",), "execution_provider": ("str",),
    "measurements": ("str?",), "fusable_activations": ("str list",), "grouped_activations": ("str list",),
    "parallelism": ("int", 1, 1 << 16),
    "vector_lanes": ("int", 1, 1 << 16),
    "clock_hz": ("number", 1e3, 1e12),
    "sram_bytes": ("int", 0, 1 << 48),
    "dram_bytes_per_cycle": ("number", 1e-6, 1e9),
    "dispatch_cycles": ("int", 0, 1 << 40),
    "element_bytes": ("int", 1, 8),
    "threads": ("int", 1, 1024),
}

def builtin_targets() -> list[str]:
    folder = resources.files(__package__) / "targets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_target(name_or_path: str | Path = DEFAULT_TARGET) -> Target:
    """A built-in target by name, or a profile from a JSON file."""
    text = str(name_or_path)
    if text in builtin_targets():
        path = Path(str(resources.files(__package__) / "targets" / f"{text}.json"))
    elif text.endswith(".json") or Path(text).exists():
        path = Path(text)
        if not path.is_file():
            raise TargetError(f"{path}: no such target profile")
    else:
        raise TargetError(f"unknown target '{text}'; built-in targets: {', '.join(builtin_targets())} "
                          "(or give the path of a profile .json)")
    return parse_target(path)


def parse_target(path: Path) -> Target:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: cannot read the profile: {exc}") from None
    except json.JSONDecodeError as exc:
        raise TargetError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise TargetError(f"{path}: a target profile is a JSON object")
    known = {f.name for f in fields(Target)} - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TargetError(f"{path}: unknown profile field '{unknown[0]}' (fields: {', '.join(sorted(known))})")
    for key in ("name", "kind"):
        if not isinstance(raw.get(key), str):
            raise TargetError(f"{path}: the profile needs a '{key}' string")
    if raw["kind"] not in _REQUIRED:
        raise TargetError(f"{path}: kind '{raw['kind']}' is not one of {', '.join(_REQUIRED)}")
    missing = [k for k in _REQUIRED[raw["kind"]] if k not in raw]
    if missing:
        raise TargetError(f"{path}: a '{raw['kind']}' profile needs '{missing[0]}'")
    for key, value in raw.items():
        raw[key] = _checked(path, key, value)
    raw["fusable_activations"] = tuple(raw.get("fusable_activations", ()))
    raw["grouped_activations"] = tuple(raw.get("grouped_activations", ()))
    return Target(**raw, source=path)


def _checked(path: Path, key: str, value):
    """`value` of profile field `key` if it has the field's type and range (an integral float as an int)."""
    kind, *bounds = _FIELDS[key]
    if kind in ("str", "str?"):
        if isinstance(value, str) or (kind == "str?" and value is None):
            return value
        raise TargetError(f"{path}: '{key}' must be a string, got {json.dumps(value)[:60]}")
    if kind == "str list":  # a bare string would be read as a list of its letters
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise TargetError(f"{path}: '{key}' must be a list of strings (e.g. [\"relu\"]), got {json.dumps(value)[:60]}")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise TargetError(f"{path}: '{key}' must be a finite number, got {value!r}")
    if kind == "int":
        if value != int(value):
            raise TargetError(f"{path}: '{key}' must be a whole number, got {value!r}")
        value = int(value)
    low, high = bounds
    if not low <= value <= high:
        raise TargetError(f"{path}: '{key}' must be from {low:g} to {high:g}, got {value!r}")
    return value
