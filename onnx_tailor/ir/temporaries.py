"""Temporary files and folders that a killed run leaves behind and the next run removes.

Every temporary onnx-tailor makes is named `.onnx-tailor-<pid>-<random>.<kind>`:
the staged outputs of `ir.io.Outputs` beside their destinations, and the scratch
folders in the system temp dir where onnxruntime is handed files (its clean-up's
optimized model, the quantizer's input and output, the profiler's trace). A
process killed by a signal runs no clean-up, so whoever makes the next temporary
in the same folder first removes those whose process is gone. Older versions
named their temporaries `.onnx-tailor-<random>`, without a pid; one of those is
removed when it has not been touched for an hour.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_PREFIX = ".onnx-tailor-"
_OURS = re.compile(r"\.onnx-tailor-(?:(\d+)-[a-z0-9_]{8}\.\w+|[a-z0-9_]{8})")
_LEGACY_AGE_S = 3600  # an untagged temporary this old belongs to no running process


def tagged_prefix() -> str:
    """The name a temporary of this process starts with (`tempfile`'s `prefix`; give a `suffix` too)."""
    return f"{_PREFIX}{os.getpid()}-"


@contextmanager
def scratch_folder(kind: str) -> Iterator[Path]:
    """A fresh folder in the system temp dir for files onnxruntime reads or writes, removed on leaving;
    the scratch folders of dead processes are removed first. `kind` (a word) ends its name."""
    base = Path(tempfile.gettempdir())
    remove_stale_temporaries(base)
    folder = Path(tempfile.mkdtemp(prefix=tagged_prefix(), suffix=f".{kind}", dir=base))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporaries that killed runs left in `folder`: those of a process that is gone,
    and untagged ones (older versions) not touched for an hour."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _OURS.fullmatch(entry.name)
        if not match:
            continue
        pid = match.group(1)
        try:
            stale = (not _alive(int(pid))) if pid else time.time() - entry.stat().st_mtime > _LEGACY_AGE_S
            if not stale:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif pid:
                os.unlink(entry.path)
        except OSError:
            continue  # another run got there first, or it is not ours to remove


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
