"""The producer's pool of shared-memory segments, one slot per segment, in power-of-two classes.

Creating a segment per tensor costs ~10x a copy into a warm one (fresh pages fault in on both
sides), so released segments go back to an idle list and the next export of the same size class
reuses one. Idle segments beyond a byte budget are unlinked, least recently used first. A class
wastes up to half its bytes only in address space: pages past the bytes written are never
touched, so they take no memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from services.common.transport import metrics
from services.common.transport.shm import Segment, SegmentNamer

MIN_SEGMENT_BYTES = 4096

log = logging.getLogger(__name__)


def size_class(nbytes: int) -> int:
    """The segment size that holds ``nbytes``: the next power of two, at least a page."""
    return max(MIN_SEGMENT_BYTES, 1 << (max(nbytes, 1) - 1).bit_length())


class ShmSlot:
    """A segment pinned by one lease."""

    def __init__(self, pool: SegmentPool, segment: Segment) -> None:
        self.pool = pool
        self.segment = segment

    def free(self) -> None:
        self.pool.put_back(self.segment)


class SegmentPool:
    """Thread-safe. Every segment it creates is unlinked by :meth:`close` at the latest."""

    def __init__(self, role: str, idle_budget_bytes: int) -> None:
        self.role = role
        self.idle_budget_bytes = idle_budget_bytes
        self._namer = SegmentNamer()
        self._lock = threading.Lock()
        self._pinned: dict[str, Segment] = {}
        self._idle: dict[int, OrderedDict[str, tuple[float, Segment]]] = {}
        self._idle_bytes = 0
        self._closed = False
        self.created = 0

    @property
    def prefix(self) -> str:
        """Every segment name of this pool starts with it."""
        return self._namer.prefix

    def acquire(self, nbytes: int) -> ShmSlot:
        """A pinned segment of at least ``nbytes``; OSError when /dev/shm refuses a new one."""
        size = size_class(nbytes)
        with self._lock:
            if self._closed:
                raise RuntimeError("segment pool is closed")
            idle = self._idle.get(size)
            if idle:
                _, (_, segment) = idle.popitem(last=True)
                self._idle_bytes -= size
                self._pinned[segment.name] = segment
                return ShmSlot(self, segment)
        segment = Segment.create(self._namer.next(), size)
        with self._lock:
            if self._closed:
                self._destroy(segment)
                raise RuntimeError("segment pool is closed")
            self._pinned[segment.name] = segment
            self.created += 1
        metrics.SHM_BYTES.labels(self.role).inc(size)
        return ShmSlot(self, segment)

    def put_back(self, segment: Segment) -> None:
        with self._lock:
            if self._pinned.pop(segment.name, None) is None:
                return  # pool closed meanwhile: already unlinked
            self._idle.setdefault(segment.size, OrderedDict())[segment.name] = (
                time.monotonic(),
                segment,
            )
            self._idle_bytes += segment.size
            victims = self._trim_locked()
        for victim in victims:
            self._destroy(victim)

    def segment_count(self) -> int:
        with self._lock:
            return len(self._pinned) + sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        """Unlink every segment, pinned or idle. Safe to call twice."""
        with self._lock:
            self._closed = True
            segments = list(self._pinned.values())
            for idle in self._idle.values():
                segments.extend(segment for _, segment in idle.values())
            self._pinned.clear()
            self._idle.clear()
            self._idle_bytes = 0
        for segment in segments:
            self._destroy(segment)

    def _trim_locked(self) -> list[Segment]:
        victims: list[Segment] = []
        while self._idle_bytes > self.idle_budget_bytes:
            oldest = min(
                (idle for idle in self._idle.values() if idle),
                key=lambda idle: next(iter(idle.values()))[0],
            )
            _, (_, segment) = oldest.popitem(last=False)
            self._idle_bytes -= segment.size
            victims.append(segment)
        return victims

    def _destroy(self, segment: Segment) -> None:
        segment.unlink()
        segment.close()
        metrics.SHM_BYTES.labels(self.role).dec(segment.size)
