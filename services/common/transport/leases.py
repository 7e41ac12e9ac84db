"""Lease bookkeeping: which slot each granted lease pins, until when, for which request.

The table only records; freeing the memory behind an ended lease is the caller's job, done
outside the table's lock with the :class:`Slot` objects the table hands back.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class Slot(Protocol):
    """Memory pinned by a lease; ``free`` hands it back to its pool (called exactly once)."""

    def free(self) -> None: ...


@dataclass
class TensorLease:
    lease_id: str
    request_id: str
    expires_at: float  # unix seconds
    slot: Slot


class LeaseTable:
    """Thread-safe map of live leases, indexed by id, request and expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._leases: dict[str, TensorLease] = {}
        self._by_request: dict[str, set[str]] = {}
        self._expiry: list[tuple[float, str]] = []  # heap; entries of ended leases are skipped

    def grant(self, slot: Slot, request_id: str, expires_at: float) -> TensorLease:
        with self._lock:
            lease = TensorLease(f"{self._prefix}-{next(self._ids)}", request_id, expires_at, slot)
            self._leases[lease.lease_id] = lease
            if request_id:
                self._by_request.setdefault(request_id, set()).add(lease.lease_id)
            heapq.heappush(self._expiry, (expires_at, lease.lease_id))
            if len(self._expiry) > 2 * len(self._leases) + 1024:
                # released leases leave their heap entries behind until expiry; drop them
                self._expiry = [(x.expires_at, x.lease_id) for x in self._leases.values()]
                heapq.heapify(self._expiry)
            return lease

    def end(self, lease_ids: Iterable[str]) -> tuple[list[TensorLease], int]:
        """Remove the named leases: (those removed, count of ids not held)."""
        ended: list[TensorLease] = []
        unknown = 0
        with self._lock:
            for lease_id in lease_ids:
                lease = self._pop(lease_id)
                if lease is None:
                    unknown += 1
                else:
                    ended.append(lease)
        return ended, unknown

    def end_request(self, request_id: str) -> list[TensorLease]:
        with self._lock:
            ids = self._by_request.get(request_id, set()).copy()
            return [lease for lease in map(self._pop, ids) if lease is not None]

    def end_expired(self, now: float) -> list[TensorLease]:
        ended: list[TensorLease] = []
        with self._lock:
            while self._expiry and self._expiry[0][0] <= now:
                _, lease_id = heapq.heappop(self._expiry)
                lease = self._pop(lease_id)
                if lease is not None:
                    ended.append(lease)
        return ended

    def end_all(self) -> list[TensorLease]:
        with self._lock:
            ended = list(self._leases.values())
            self._leases.clear()
            self._by_request.clear()
            self._expiry.clear()
        return ended

    def next_expiry(self) -> float | None:
        """The earliest expiry still queued (possibly of a lease already ended)."""
        with self._lock:
            return self._expiry[0][0] if self._expiry else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    def _pop(self, lease_id: str) -> TensorLease | None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None and lease.request_id:
            ids = self._by_request.get(lease.request_id)
            if ids is not None:
                ids.discard(lease_id)
                if not ids:
                    del self._by_request[lease.request_id]
        return lease
