"""The ControlNets a replica keeps resident, within a memory budget, least recently used out.

A stream acquires its ControlNet when it opens and releases it when it ends;
an acquired ControlNet is never evicted. Loading one that does not fit next
to the acquired ones is refused (RESOURCE_EXHAUSTED) rather than overrunning
the budget. Models are keyed by name only: one resident ControlNet serves
requests of every base model it fits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.common.errors import ResourceExhausted
from services.controlnet import metrics

log = logging.getLogger("dfleet.controlnet")


def model_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())


@dataclass
class _Entry:
    model: Any
    nbytes: int
    users: int = 0


class ControlNetCache:
    """Thread-safe. ``load(name)`` reads a model from storage; ``place(name, model)`` moves it
    to the device it will run on (after room was made for it) and returns what is handed out."""

    def __init__(self, load: Callable[[str], Any], budget_bytes: int,
                 place: Callable[[str, Any], Any] = lambda name, model: model) -> None:
        self._load = load
        self._place = place
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = 0
        self.misses = 0
        self.loads = 0
        self.evictions = 0

    def acquire(self, name: str) -> Any:
        """The resident model, loaded first when needed; pair with :meth:`release`."""
        with self._lock:
            if self._take(name):
                self.hits += 1
                metrics.HITS.labels(name).inc()
                return self._entries[name].model
            gate = self._loading.setdefault(name, threading.Lock())
        with gate:
            with self._lock:
                if self._take(name):  # another stream loaded it meanwhile
                    self.hits += 1
                    metrics.HITS.labels(name).inc()
                    return self._entries[name].model
            self.misses += 1
            metrics.MISSES.labels(name).inc()
            start = time.perf_counter()
            model = self._load(name)
            nbytes = model_bytes(model)
            with self._lock:
                self._make_room(name, nbytes)
                self._entries[name] = _Entry(model, nbytes, users=1)
            try:
                placed = self._place(name, model)
            except BaseException:
                with self._lock:
                    self._entries.pop(name, None)
                    self._update_gauges()
                raise
            with self._lock:
                self._entries[name].model = placed
                self._update_gauges()
            self.loads += 1
            metrics.LOADS.labels(name).inc()
            metrics.LOAD_SECONDS.labels(name).observe(time.perf_counter() - start)
            log.info("loaded ControlNet %s (%d bytes)", name, nbytes)
            return placed

    def release(self, name: str) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.users > 0:
                entry.users -= 1

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    @property
    def resident_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def _take(self, name: str) -> bool:
        entry = self._entries.get(name)
        if entry is None:
            return False
        entry.users += 1
        self._entries.move_to_end(name)
        return True

    def _make_room(self, name: str, nbytes: int) -> None:
        """Evicts idle models, oldest first, until ``nbytes`` more fit; refuses otherwise."""
        if nbytes > self.budget_bytes:
            raise ResourceExhausted(f"ControlNet {name!r} needs {nbytes} bytes, over the "
                                    f"budget of {self.budget_bytes}", field="controlnet")
        used = sum(e.nbytes for e in self._entries.values())
        for victim in [n for n, e in self._entries.items() if e.users == 0]:
            if used + nbytes <= self.budget_bytes:
                break
            used -= self._entries.pop(victim).nbytes
            self.evictions += 1
            metrics.EVICTIONS.labels(victim).inc()
            log.info("evicted ControlNet %s", victim)
        if used + nbytes > self.budget_bytes:
            busy = ", ".join(n for n, e in self._entries.items() if e.users)
            raise ResourceExhausted(f"no room for ControlNet {name!r} ({nbytes} bytes) next to "
                                    f"ControlNets in use: {busy}", field="controlnet")

    def _update_gauges(self) -> None:
        metrics.RESIDENT_BYTES.set(sum(e.nbytes for e in self._entries.values()))
        metrics.RESIDENT_MODELS.set(len(self._entries))
