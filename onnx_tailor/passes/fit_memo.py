"""Fitted weights kept by what they were fitted from: a fit asked for again is not computed again.

A lossy fit's weights are a function of the tensors it reads and aims at,
the calibration data and its parameters, nothing else; the cone digests
(`ir.cones`) name those tensors by what computes them. A search asks for the
same fit again whenever a step leaves a site's cone alone: greedy tries a
candidate on a model, takes another step elsewhere (downstream of it), and
tries the same candidate on the child; with workers, a candidate computed
ahead on the parent is the same fit as the one the next step asks for on the
child. Keyed by those digests, the memo hands back the very arrays a fresh
fit would make (fits are deterministic: one BLAS thread, seeded batches), so
nothing a search chooses or writes depends on whether it hit.

Entries live in this process's memory (the last MEMORY_ENTRIES) and, when a
directory is given (a search with workers: one directory shared by them all),
as .npz files there, written atomically and read without pickles, so that a
fit one worker made serves the others; the search removes the directory when
it closes, and the next search removes one whose process was killed
(`shared_directory`). The active memo is a context variable (`using`), like
the tensor cache; without one, fits are computed every time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ..ir import Model
from ..ir.cones import cone_digests
from .tensor_cache import active_cache, fingerprint

MEMORY_ENTRIES = 16  # fits kept in memory; a deep block's weights are a few MB
VERSION = b"fit-memo-1"  # changes whenever a fit's arithmetic does, so that no old entry is served


@dataclass
class MemoStats:
    hits: int = 0
    misses: int = 0

    def to_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses}


class FitMemo:
    """Arrays by key, in memory and optionally in a directory shared by processes (module docstring)."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.stats = MemoStats()
        self._entries: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        found = self._entries.get(key)
        if found is None and self.directory is not None and (self.directory / f"{key}.npz").is_file():
            with np.load(self.directory / f"{key}.npz", allow_pickle=False) as stored:
                found = {name: stored[name] for name in stored.files}
            self._keep(key, found)
        if found is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return found

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        arrays = {name: np.array(value) for name, value in arrays.items()}  # copies: the caller's stay its own
        self._keep(key, arrays)
        if self.directory is None or not self.directory.is_dir():  # a Ray node without the search's directory
            return
        handle, partial = tempfile.mkstemp(suffix=".npz.partial", dir=self.directory)
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **arrays)
            os.replace(partial, self.directory / f"{key}.npz")
        except OSError:
            Path(partial).unlink(missing_ok=True)  # a memo that cannot write only misses; the fit stands

    def _keep(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        for value in arrays.values():
            value.flags.writeable = False  # handed to every later hit
        self._entries[key] = arrays
        self._entries.move_to_end(key)
        while len(self._entries) > MEMORY_ENTRIES:
            self._entries.popitem(last=False)


DIRECTORY_PREFIX = "onnx-tailor-fits-"


def shared_directory() -> str:
    """A new directory for workers to share fits through, named after this process. The search removes
    its own when it closes; one left by a search that was killed (its process gone) is removed here."""
    for stale in Path(tempfile.gettempdir()).glob(f"{DIRECTORY_PREFIX}*-*"):
        pid = stale.name[len(DIRECTORY_PREFIX):].partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def fit_key(model: Model, tensors: list[str], reference: Model | None, aimed: list[str],
            calib: Mapping[str, np.ndarray], *parts: str) -> str:
    """The key of a fit that reads `tensors` of `model` (their whole cones: every weight upstream) and aims at
    `aimed` as `reference` computes them, on `calib`, with `parts` (the step, its parameters) besides."""
    cache = active_cache()
    own = cache.digests(model) if cache is not None else cone_digests(model)
    digest = hashlib.sha256(VERSION)
    for tensor in tensors:
        digest.update(f"own:{own[tensor]};".encode())
    if reference is not None and reference is not model:
        theirs = cache.digests(reference) if cache is not None else cone_digests(reference)
        for tensor in aimed:
            digest.update(f"aimed:{theirs.get(tensor)};".encode())
    digest.update(f"data:{_fingerprint(calib)};".encode())
    for part in parts:
        digest.update(f"part:{part};".encode())
    return digest.hexdigest()


def _fingerprint(calib: Mapping[str, np.ndarray]) -> str:
    cache = active_cache()
    return cache.fingerprint(calib) if cache is not None else fingerprint(calib)  # the cache's is memoized


_active: ContextVar[FitMemo | None] = ContextVar("onnx_tailor_fit_memo", default=None)


def active_memo() -> FitMemo | None:
    return _active.get()


@contextmanager
def using(memo: FitMemo | None) -> Iterator[FitMemo | None]:
    """Make `memo` the one fits use inside the block (None: every fit computed)."""
    token = _active.set(memo)
    try:
        yield memo
    finally:
        _active.reset(token)
