"""The consumer's cache of attached segments: attach once per name, reuse the mapping.

A producer never reuses a name for another segment, so a cached mapping is never stale; but a
mapping keeps the memory of a segment the producer has since unlinked, so the cache is bounded
in bytes and drops the least recently used mappings first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from services.common.transport.errors import TransportError
from services.common.transport.shm import NAME_PREFIX, Segment

DEFAULT_BUDGET_BYTES = 1 << 30


class AttachedSegments:
    """Thread-safe; :meth:`get` raises TransportError for names it must not or cannot open."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._segments: OrderedDict[str, Segment] = OrderedDict()
        self._bytes = 0
        self.attached = 0

    def get(self, name: str) -> Segment:
        with self._lock:
            segment = self._segments.get(name)
            if segment is not None:
                self._segments.move_to_end(name)
                return segment
        if not name.startswith(NAME_PREFIX) or "/" in name:
            raise TransportError(f"segment name {name!r} is not a transport segment")
        try:
            segment = Segment.attach(name)
        except FileNotFoundError:
            raise TransportError(f"unknown shared-memory segment {name!r}") from None
        except OSError as e:
            raise TransportError(f"cannot open shared-memory segment {name!r}: {e}") from e
        with self._lock:
            raced = self._segments.get(name)
            if raced is not None:  # another thread attached it meanwhile
                return raced
            self.attached += 1
            self._segments[name] = segment
            self._bytes += segment.size
            self._evict_locked(keep=name)
        return segment

    def close(self) -> None:
        with self._lock:
            segments = list(self._segments.values())
            self._segments.clear()
            self._bytes = 0
        for segment in segments:
            segment.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._segments)

    def _evict_locked(self, keep: str) -> None:
        # Evicted mappings are dropped, not closed: a thread may still be copying out of one,
        # and the mapping goes with its last reference.
        while self._bytes > self.budget_bytes and len(self._segments) > 1:
            name, segment = next(iter(self._segments.items()))
            if name == keep:
                break
            del self._segments[name]
            self._bytes -= segment.size
