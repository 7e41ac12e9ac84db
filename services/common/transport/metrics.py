"""Prometheus metrics of the transport, registered once per process whatever the exporter count.

Labels are limited to role, kind (inline / host_shm / cuda_ipc / ring) and reason.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge

_M = TypeVar("_M", Counter, Gauge)


def _metric(cls: type[_M], name: str, doc: str, labels: tuple[str, ...]) -> _M:
    """The metric of that name, created on first use; a re-imported module reuses it."""
    try:
        return cls(name, doc, labels)
    except ValueError:  # already registered by an earlier import of this module
        existing: Any = REGISTRY._names_to_collectors[name]
        return existing  # type: ignore[no-any-return]


EXPORTED_BYTES = _metric(
    Counter, "dfleet_transport_bytes", "Tensor bytes exported, by payload kind.", ("role", "kind")
)
EXPORTED_TENSORS = _metric(
    Counter, "dfleet_transport_tensors", "Tensors exported, by payload kind.", ("role", "kind")
)
LOADED_BYTES = _metric(
    Counter,
    "dfleet_transport_loaded_bytes",
    "Tensor bytes read from refs by importers, by payload kind.",
    ("role", "kind"),
)
FALLBACKS = _metric(
    Counter,
    "dfleet_transport_fallbacks",
    "Exports that could not use the cheapest payload kind for their peer, by reason.",
    ("role", "reason"),
)
ACTIVE_LEASES = _metric(
    Gauge, "dfleet_transport_active_leases", "Leases granted and not yet released.", ("role",)
)
LEASES_ENDED = _metric(
    Counter,
    "dfleet_transport_leases_ended",
    "Leases ended, by reason: released, expired, request_done, closed.",
    ("role", "reason"),
)
UNKNOWN_RELEASES = _metric(
    Counter,
    "dfleet_transport_unknown_releases",
    "Release calls naming a lease id the exporter does not hold (already ended or never granted).",
    ("role",),
)
RELEASE_FAILURES = _metric(
    Counter,
    "dfleet_transport_release_failures",
    "Release RPCs from importers that failed, by reason (gRPC status or no_owner).",
    ("role", "reason"),
)
SHM_BYTES = _metric(
    Gauge,
    "dfleet_transport_shm_segment_bytes",
    "Bytes of shared-memory segments this process created and has not unlinked.",
    ("role",),
)
RINGS_OPEN = _metric(
    Gauge,
    "dfleet_transport_rings_open",
    "Per-stream shared-memory step rings open in this process.",
    ("role",),
)
