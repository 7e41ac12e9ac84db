"""Where the controller reads load from: queue depth and live replicas per model node.

:class:`QueueDepthSource` reads the keys :mod:`services.common.fleet_state` defines
(the gateway's depth hash, the replicas' heartbeats). Any Redis failure surfaces as
:class:`SourceUnavailable`, which the loop treats as retryable: it logs, counts and
tries again next tick, changing no replica count meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.common.fleet_state import FleetState


class SourceUnavailable(RuntimeError):
    """The load source could not be read this tick; retryable."""


@dataclass(frozen=True)
class FleetSnapshot:
    """One reading of the fleet: depth per ``role:model`` field, live replicas per role."""

    depths: dict[str, int] = field(default_factory=dict)
    live_replicas: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)

    def depth(self, queues: Iterable[str]) -> int:
        """The largest depth among ``queues``; a node serving several is as busy as its busiest."""
        return max((self.depths.get(q, 0) for q in queues), default=0)

    def live(self, role: str, model: str) -> int:
        """Replicas of ``role`` heartbeating that hold ``model`` (or name no model at all)."""
        return sum(1 for models in self.live_replicas.get(role, [])
                   if not models or model in models)


class DepthSource(Protocol):
    def read(self, roles: Iterable[str]) -> FleetSnapshot:
        """Depths of every node and the live replicas of ``roles``; raises SourceUnavailable."""
        ...


class QueueDepthSource:
    """Reads depth and heartbeats from Redis through :class:`FleetState`."""

    def __init__(self, fleet: FleetState) -> None:
        self.fleet = fleet

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 2.0) -> QueueDepthSource:
        # One immediate retry covers a pooled connection a Redis restart broke; beyond that
        # the loop's next tick is the retry, so a tick never sleeps in backoff.
        client = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                      socket_connect_timeout=timeout_s,
                                      retry=Retry(NoBackoff(), 1))
        return cls(FleetState(client))

    def read(self, roles: Iterable[str]) -> FleetSnapshot:
        try:
            depths = self.fleet.depths()
            live = {role: [r.models for r in self.fleet.replicas(role)] for role in set(roles)}
        except (redis.RedisError, OSError, ValueError) as exc:
            raise SourceUnavailable(f"redis: {exc}") from exc
        return FleetSnapshot(depths=depths, live_replicas=live)
