"""Calibration tensors kept across fits: capture once, fit many.

A search fits hundreds of lossy candidates, and every fit reads tensors of
its model and of the original (the reference it aims at) on the same
calibration inputs. Without a cache each fit runs both models again. With
one, a tensor is keyed by its cone digest (`ir.cones`) and by the data it
was computed on, so a value computed on one model serves every model that
computes it the same way: the original's tensors for the whole search, a
parent's tensors upstream of a step for all its children. A step invalidates
exactly the tensors downstream of the region it changed, because only their
digests change; nothing is ever stale.

When one capture misses, every tensor a fit has asked for by name before and
that the model has (`interest`), and that is not cached yet, joins the run:
the next candidates' fits on the same model find their tensors ready, so a
model runs about once however many fits read it.

Memory: the cache holds at most `budget_bytes` (default DEFAULT_FRACTION of
the machine's memory, `--cache-bytes` on the command line). Over it, the
least recently used tensors go first, the reference's (`pinned`) last; a
tensor larger than what is left is not kept and is simply computed again
the next time. Values are returned read-only: they are shared.

The active cache is a context variable (`using`): a search installs one for
its run, each worker process of a parallel search its own; outside of them
`capture` computes every time, as it always did.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np

from ..ir import Model
from ..ir.cones import cone_digests

DEFAULT_FRACTION = 0.125  # of physical memory; the search itself and onnxruntime need the rest
MAX_INTEREST = 4096  # tensor names remembered for prefetching


def default_budget() -> int:
    """DEFAULT_FRACTION of physical memory (1 GiB where the platform does not say)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total * DEFAULT_FRACTION)


@dataclass
class CacheStats:
    hits: int = 0  # tensors served from the cache
    misses: int = 0  # tensors asked for and computed
    runs: int = 0  # onnxruntime runs made to compute them
    cut_runs: int = 0  # of them, runs of a cut from cached tensors rather than of the whole model
    refused: int = 0  # computed tensors not kept, for the budget

    def to_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "runs": self.runs, "cut_runs": self.cut_runs,
                "refused": self.refused}


class TensorCache:
    """Tensors by (cone digest, data fingerprint), within a byte budget (see the module docstring)."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget_bytes = default_budget() if budget_bytes is None else int(budget_bytes)
        self.stats = CacheStats()
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()  # least recently used first
        self._pinned: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._axes: dict[tuple[str, str], int | None] = {}  # each kept tensor's batch axis, as `run_samples` joined it
        self._digests: weakref.WeakKeyDictionary[Model, dict[str, str]] = weakref.WeakKeyDictionary()
        self._interest: dict[str, None] = {}  # tensor names fits have read, oldest first
        self._data: dict[int, tuple[Mapping, str]] = {}  # id of a feed dict -> (the dict, its fingerprint)

    # -- keys -------------------------------------------------------------------------

    def digests(self, model: Model) -> dict[str, str]:
        if model not in self._digests:
            self._digests[model] = cone_digests(model)
        return self._digests[model]

    def fingerprint(self, samples: Mapping[str, np.ndarray]) -> str:
        """What the samples are, by content (memoized per dict: the calibration split is one dict for a whole run)."""
        known = self._data.get(id(samples))
        if known is not None and known[0] is samples:
            return known[1]
        found = fingerprint(samples)
        if len(self._data) >= 8:  # a few live feed dicts at a time; the dict is held so its id stays its own
            self._data.pop(next(iter(self._data)))
        self._data[id(samples)] = (samples, found)
        return found

    # -- lookup and storage -------------------------------------------------------------

    def lookup(self, model: Model, tensors: list[str], data: str) -> dict[str, np.ndarray]:
        """The cached values among `tensors` of `model` on `data`."""
        digests = self.digests(model)
        found = {}
        for tensor in tensors:
            digest = digests.get(tensor)
            key = (digest, data)
            for entries in (self._entries, self._pinned):
                if digest is not None and key in entries:
                    entries.move_to_end(key)
                    found[tensor] = entries[key]
                    break
        self.stats.hits += len(found)
        self.stats.misses += len(tensors) - len(found)
        return found

    def batch_axis(self, model: Model, tensor: str, data: str) -> tuple[bool, int | None]:
        """(whether `tensor` of `model` on `data` is kept, its batch axis as it was joined), without touching
        the statistics or the order of eviction."""
        key = (self.digests(model).get(tensor), data)
        return (key[0] is not None and (key in self._entries or key in self._pinned)), self._axes.get(key)

    def wanted(self, model: Model, data: str, asked: list[str], samples: int) -> list[str]:
        """What one run of `model` on `samples` samples should compute when `asked` misses: `asked`, and the
        tensors fits have read before that `model` has, not cached yet, and fit the budget by their estimated size."""
        self._remember(asked)
        digests = self.digests(model)
        room = self.budget_bytes - self.bytes
        extra = []
        for tensor in self._interest:
            digest = digests.get(tensor)
            if (tensor in asked or digest is None or model.producer(tensor) is None
                    or (digest, data) in self._entries or (digest, data) in self._pinned):
                continue
            size = _estimated_bytes(model, tensor, samples)
            if size is None or size > room:
                continue
            room -= size
            extra.append(tensor)
        return [*asked, *extra]

    def store(self, model: Model, values: Mapping[str, np.ndarray], data: str, pinned: bool = False,
              axes: Mapping[str, int | None] | None = None) -> None:
        """Keep `values` (tensors of `model` on `data`, joined along `axes` when run on samples) as far as the
        budget allows."""
        digests = self.digests(model)
        entries = self._pinned if pinned else self._entries
        for tensor, value in values.items():
            digest = digests.get(tensor)
            if digest is None or (digest, data) in self._entries or (digest, data) in self._pinned:
                continue
            if not self._make_room(value.nbytes, pinned):
                self.stats.refused += 1
                continue
            value.flags.writeable = False  # shared by every later reader
            entries[(digest, data)] = value
            self._axes[(digest, data)] = None if axes is None else axes.get(tensor)
            self.bytes += value.nbytes

    def _make_room(self, size: int, pinned: bool) -> bool:
        """Evict least recently used tensors, ordinary ones first, until `size` more bytes fit."""
        if size > self.budget_bytes:
            return False
        for entries in (self._entries, self._pinned) if pinned else (self._entries,):
            while self.bytes + size > self.budget_bytes and entries:
                key, evicted = entries.popitem(last=False)
                self._axes.pop(key, None)
                self.bytes -= evicted.nbytes
        return self.bytes + size <= self.budget_bytes

    def _remember(self, tensors: list[str]) -> None:
        for tensor in tensors:
            self._interest.pop(tensor, None)
            self._interest[tensor] = None
        while len(self._interest) > MAX_INTEREST:
            self._interest.pop(next(iter(self._interest)))


def fingerprint(samples: Mapping[str, np.ndarray]) -> str:
    """What the samples are, by content: their names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(samples):
        array = np.ascontiguousarray(samples[name])
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _estimated_bytes(model: Model, tensor: str, samples: int) -> int | None:
    """A tensor's size on `samples` samples from the shape the proto declares, a symbolic (batch) dimension
    counted once per sample, as float32 (`store` checks the real size); None when no shape is declared.
    Declared shapes cost nothing to read, where inferring them would cost more than the run saves."""
    shape = model.declared_shape(tensor)
    if shape is None:
        return None
    return int(np.prod([d if isinstance(d, int) and d > 0 else 1 for d in shape], dtype=np.int64)) * 4 * samples


_active: ContextVar[TensorCache | None] = ContextVar("onnx_tailor_tensor_cache", default=None)


def active_cache() -> TensorCache | None:
    return _active.get()


@contextmanager
def using(cache: TensorCache | None) -> Iterator[TensorCache | None]:
    """Make `cache` the one `capture` uses inside the block (None: no caching)."""
    token = _active.set(cache)
    try:
        yield cache
    finally:
        _active.reset(token)


def install(cache: TensorCache | None) -> None:
    """Make `cache` the active one for the rest of this process's main context (a worker process's whole life)."""
    _active.set(cache)
