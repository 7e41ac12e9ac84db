"""The fleet's shared state in Redis: queue depth per model node, replica heartbeats.

Keys (all under the ``dfleet:`` prefix, or the prefix given to :class:`FleetState`):

``{p}depth:{gateway_id}`` (hash, expires after the heartbeat TTL)
    field ``"{role}:{model}"`` -> tasks waiting plus running for that model node,
    as one gateway counts them. Each gateway keeps its counts in memory, writes
    them on every change and rewrites them every heartbeat: a crashed gateway's
    counts expire with it, and after a Redis restart they come back from the
    live gateways' memory. The queue depth of a node is the sum over gateways.
``{p}depth`` (hash)
    the same fields, set by hand (tools, tests): counted too, never expires.
``{p}replicas:{role}`` (sorted set)
    member = replica id, score = unix time of its last heartbeat.
``{p}replica:{replica_id}`` (hash, expires after the heartbeat TTL)
    ``role``, ``address``, ``host_id``, ``models`` (JSON list), ``loras`` (JSON list),
    ``load`` (tasks running), ``heartbeat`` (unix time).

A replica counts as alive while its hash exists and its score is younger than
the TTL. Readers never trust the sorted set alone: a crashed replica's member
stays until it is pruned.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from services.common.errors import Unavailable

DEFAULT_PREFIX = "dfleet:"
DEFAULT_HEARTBEAT_TTL_S = 10.0


def node_name(role: str, model: str) -> str:
    """The queue-depth field of a model node, e.g. ``denoiser:tiny-sd``."""
    return f"{role}:{model}"


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    role: str
    address: str
    host_id: str
    models: tuple[str, ...] = ()
    loras: tuple[str, ...] = ()
    load: int = 0
    heartbeat: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


@contextmanager
def redis_unavailable(what: str) -> Iterator[None]:
    """Redis unreachable (down, restarting, still loading) is UNAVAILABLE: retry later."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise Unavailable(f"the fleet's Redis is unreachable ({what}): {exc}") from exc


class FleetState:
    """Reads and writes the keys above; one instance per process is enough."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX,
                 heartbeat_ttl_s: float = DEFAULT_HEARTBEAT_TTL_S) -> None:
        self.redis = client
        self.prefix = prefix
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.reachable: Callable[[str, float], bool] | None = None
        """(address, heartbeat) -> False for a replica whose connection failed since its
        last heartbeat; such replicas leave :meth:`replicas` at once."""
        self._depth_owner = ""
        self._own_depth: Counter[str] = Counter()
        self._depth_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> FleetState:
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5),
                   **kwargs)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # queue depth
    def count_depth_as(self, owner: str) -> None:
        """From now on this process's depth counts are ``owner``'s, kept in memory and
        published with a TTL (see :meth:`publish_depth`): a gateway calls it once."""
        self._depth_owner = owner

    def add_depth(self, role: str, model: str, delta: int) -> int:
        node = node_name(role, model)
        if not self._depth_owner:
            return int(self.redis.hincrby(self.key("depth"), node, delta))
        with self._depth_lock:
            self._own_depth[node] = max(0, self._own_depth[node] + delta)
            count = self._own_depth[node]
            key = self.key("depth", self._depth_owner)
            pipe = self.redis.pipeline()
            pipe.hset(key, node, count)
            pipe.pexpire(key, int(self.heartbeat_ttl_s * 1000))
            try:
                pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError):
                pass   # Redis away: the count is in memory and the next publish writes it
        return count

    def publish_depth(self) -> None:
        """Rewrites this process's counts and renews their TTL (every heartbeat)."""
        if not self._depth_owner:
            return
        key = self.key("depth", self._depth_owner)
        with self._depth_lock:
            counts: dict[Any, Any] = {node: n for node, n in self._own_depth.items() if n > 0}
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(key)
            if counts:
                pipe.hset(key, mapping=counts)
                pipe.pexpire(key, int(self.heartbeat_ttl_s * 1000))
            pipe.execute()

    def depths(self) -> dict[str, int]:
        """Queue depth per node: the sum of every live gateway's counts (and hand-set ones)."""
        keys = [self.key("depth")] + [k.decode() if isinstance(k, bytes) else k for k in
                                      self.redis.scan_iter(match=self.key("depth", "*"),
                                                           count=100)]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        total: Counter[str] = Counter()
        for raw in pipe.execute():
            for k, v in raw.items():
                total[k.decode()] += int(v)
        return {node: max(0, n) for node, n in total.items()}

    # replica heartbeats
    def heartbeat(self, info: ReplicaInfo, now: float | None = None) -> None:
        now = time.time() if now is None else now
        mapping: dict[Any, Any] = {
            "role": info.role, "address": info.address, "host_id": info.host_id,
            "models": json.dumps(list(info.models)), "loras": json.dumps(list(info.loras)),
            "load": str(info.load), "heartbeat": repr(now), **info.extra,
        }
        replica_key = self.key("replica", info.replica_id)
        pipe = self.redis.pipeline()
        pipe.hset(replica_key, mapping=mapping)
        pipe.pexpire(replica_key, int(self.heartbeat_ttl_s * 1000))
        pipe.zadd(self.key("replicas", info.role), {info.replica_id: now})
        pipe.execute()

    def deregister(self, role: str, replica_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self.key("replica", replica_id))
        pipe.zrem(self.key("replicas", role), replica_id)
        pipe.execute()

    def replicas(self, role: str, now: float | None = None) -> list[ReplicaInfo]:
        """Live replicas of a role: heartbeat younger than the TTL (members whose heartbeat
        expired are pruned) and, when :attr:`reachable` is set, connection not failed."""
        now = time.time() if now is None else now
        zkey = self.key("replicas", role)
        self.redis.zremrangebyscore(zkey, "-inf", now - self.heartbeat_ttl_s)
        members: list[bytes] = self.redis.zrange(zkey, 0, -1)  # type: ignore[assignment]
        ids = [m.decode() for m in members]
        if not ids:
            return []
        pipe = self.redis.pipeline()
        for replica_id in ids:
            pipe.hgetall(self.key("replica", replica_id))
        found = []
        for replica_id, raw in zip(ids, pipe.execute(), strict=True):
            if not raw:
                continue
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            if self.reachable is not None and not self.reachable(
                    fields.get("address", ""), float(fields.get("heartbeat", "0"))):
                continue
            found.append(ReplicaInfo(
                replica_id=replica_id, role=fields.pop("role"), address=fields.pop("address"),
                host_id=fields.pop("host_id", ""),
                models=tuple(json.loads(fields.pop("models", "[]"))),
                loras=tuple(json.loads(fields.pop("loras", "[]"))),
                load=int(fields.pop("load", "0")), heartbeat=float(fields.pop("heartbeat", "0")),
                extra=fields,
            ))
        return found
