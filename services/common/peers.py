"""Peer addresses a caller names must belong to the fleet's own registry.

Some requests carry the address of a peer to dial (a Denoise call names its
ControlNet replicas, LoRA cache and CFG partner). A service dials such an
address only when a live replica of the expected role heartbeats it into Redis,
so a caller cannot make a fleet member connect anywhere else (another port of
the host, a service outside the fleet).
"""

from __future__ import annotations

import threading
import time

import grpc

from services.common.errors import FleetError
from services.common.fleet_state import FleetState

REFRESH_S = 1.0


class PermissionDenied(FleetError):
    code = grpc.StatusCode.PERMISSION_DENIED


class PeerRegistry:
    """Live replica addresses per role, read from heartbeats (cached for ``REFRESH_S``)."""

    def __init__(self, fleet: FleetState | None) -> None:
        self.fleet = fleet
        self._known: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def _addresses(self, role: str, fresh: bool) -> frozenset[str]:
        assert self.fleet is not None
        with self._lock:
            cached = self._known.get(role)
        if cached is not None and not fresh and time.monotonic() - cached[0] < REFRESH_S:
            return cached[1]
        found = frozenset(r.address for r in self.fleet.replicas(role))
        with self._lock:
            self._known[role] = (time.monotonic(), found)
        return found

    def check(self, role: str, address: str, field: str) -> None:
        """PERMISSION_DENIED unless ``address`` is a live ``role`` replica of this fleet.
        A process without a registry (no Redis: tests, a single service) cannot check."""
        if self.fleet is None or not address:
            return
        if address in self._addresses(role, fresh=False):
            return
        if address in self._addresses(role, fresh=True):   # a replica that just came up
            return
        raise PermissionDenied(f"{address!r} is not a live {role} replica of this fleet "
                               "(peers come from the fleet's registry)", field=field)
