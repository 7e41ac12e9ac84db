"""The node's host tier of LoRAs: storage -> host shared memory, within a byte budget, LRU.

A LoRA file is converted once here, by the pipelines' own converters
(:mod:`services.common.lora_files`), into the layers its models merge: what the segment holds
and every reader gets is that form, whatever format the file was in.

``prepare`` returns once a LoRA is in host memory. A fetch pins the LoRA for
``pin_s`` seconds so the segment outlives the readers it was handed to: an
evicted LoRA that is still pinned leaves the index at once (it no longer
counts against the budget) and its segment is unlinked when the pin ends.
The device tier lives in each denoiser (:mod:`services.denoiser.lora_loader`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.lora_files import ConvertedLora, pack
from services.common.model_store import ModelStore
from services.common.telemetry.metrics import LORA_CACHE_LOAD_SECONDS, LORA_CACHE_LOOKUPS
from services.common.transport.shm import SegmentNamer
from services.lora_cache.host_tier import HostLora

log = logging.getLogger("dfleet.lora_cache")


@dataclass(frozen=True)
class PrepareResult:
    name: str
    nbytes: int
    hit: bool
    load_ms: float


@dataclass
class _Entry:
    lora: HostLora
    pinned_until: float = 0.0


class LoraCacheEngine:
    """Thread-safe; one per node."""

    def __init__(self, store: ModelStore, budget_bytes: int, pin_s: float = 30.0,
                 read: Callable[[str], ConvertedLora] | None = None) -> None:
        """``read``: a LoRA's converted layers by name (the store's catalog by default)."""
        self.store = store
        self.read = read or store.loras.converted
        self.budget_bytes = budget_bytes
        self.pin_s = pin_s
        self._namer = SegmentNamer()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._draining: list[_Entry] = []
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def prepare(self, name: str) -> PrepareResult:
        """Makes ``name`` resident in host memory; a hit when it already was."""
        result = self._prepare(name)
        LORA_CACHE_LOOKUPS.labels(name, "hit" if result.hit else "miss").inc()
        if not result.hit:
            LORA_CACHE_LOAD_SECONDS.labels(name).observe(result.load_ms / 1e3)
        return result

    def _prepare(self, name: str) -> PrepareResult:
        if not name:
            raise InvalidArgument("a LoRA name is required", field="loras")
        start = time.perf_counter()
        with self._lock:
            entry = self._touch(name)
            if entry is not None:
                self.hits += 1
                return PrepareResult(name, entry.lora.nbytes, True, 0.0)
            gate = self._loading.setdefault(name, threading.Lock())
        with gate:
            with self._lock:
                entry = self._touch(name)
                if entry is not None:  # loaded by a concurrent prepare
                    self.hits += 1
                    return PrepareResult(name, entry.lora.nbytes, True, 0.0)
            tensors, metadata = pack(self.read(name).layers)
            lora = HostLora.pack(name, tensors, metadata, self._namer)
            if lora.nbytes > self.budget_bytes:
                lora.free()
                raise ResourceExhausted(
                    f"LoRA {name!r} needs {lora.nbytes} bytes, over the cache budget "
                    f"of {self.budget_bytes}", field="loras")
            with self._lock:
                self.misses += 1
                self._cache[name] = _Entry(lora)
                self._evict_locked(keep=name)
        return PrepareResult(name, lora.nbytes, False, (time.perf_counter() - start) * 1e3)

    def fetch(self, name: str) -> HostLora:
        """The resident LoRA (prepared first if needed), pinned for ``pin_s`` seconds."""
        while True:
            self.prepare(name)
            with self._lock:
                entry = self._cache.get(name)
                if entry is not None:  # else evicted between the two locks: prepare again
                    entry.pinned_until = time.monotonic() + self.pin_s
                    return entry.lora

    def names(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    @property
    def resident_bytes(self) -> int:
        with self._lock:
            return sum(e.lora.nbytes for e in self._cache.values())

    def draining(self) -> int:
        """Evicted LoRAs whose segments wait for their pins to end."""
        with self._lock:
            self._drain_locked()
            return len(self._draining)

    def close(self) -> None:
        with self._lock:
            entries = list(self._cache.values()) + self._draining
            self._cache.clear()
            self._draining = []
        for entry in entries:
            entry.lora.free()

    def _touch(self, name: str) -> _Entry | None:
        entry = self._cache.get(name)
        if entry is not None:
            self._cache.move_to_end(name)
        self._drain_locked()
        return entry

    def _evict_locked(self, keep: str) -> None:
        used = sum(e.lora.nbytes for e in self._cache.values())
        for name in list(self._cache):
            if used <= self.budget_bytes:
                break
            if name == keep:
                continue
            entry = self._cache.pop(name)
            used -= entry.lora.nbytes
            self.evictions += 1
            self._draining.append(entry)
            log.info("evicted LoRA %s from host memory", name)
        self._drain_locked()

    def _drain_locked(self) -> None:
        now = time.monotonic()
        keep = []
        for entry in self._draining:
            if entry.pinned_until > now:
                keep.append(entry)
            else:
                entry.lora.free()
        self._draining = keep
