"""Every accepted request, recorded in Redis until it reaches a terminal state.

Each gateway replica appends to its own stream ``dfleet:requests:{replica}``
(consumer group ``gateway``) and reads the entry back at once, so it sits in
the group's pending list. It is acknowledged only at a terminal state; what
stays pending after its gateway died is picked up by :meth:`orphans`.

``dfleet:request:{id}`` (hash) holds the state, step and error;
``dfleet:result:{id}`` the PNG, for ``result_ttl_s``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from diffusion.v1 import gateway_pb2
from services.common.fleet_state import FleetState

GROUP = "gateway"
STATE_TTL_S = 86400
TERMINAL = {gateway_pb2.REQUEST_STATE_SUCCEEDED, gateway_pb2.REQUEST_STATE_FAILED,
            gateway_pb2.REQUEST_STATE_CANCELLED}


@dataclass(frozen=True)
class Orphan:
    stream: str
    entry_id: str
    request: gateway_pb2.GenerateRequest


class RequestLog:
    def __init__(self, fleet: FleetState, replica_id: str, result_ttl_s: int) -> None:
        self.fleet = fleet
        self.redis: redis.Redis = fleet.redis
        self.replica_id = replica_id
        self.result_ttl_s = result_ttl_s
        self.stream = fleet.key("requests", replica_id)
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def record(self, request_id: str, request: gateway_pb2.GenerateRequest) -> str:
        """Appends the request and moves it into this replica's pending list."""
        entry_id = self.redis.xadd(self.stream, {"request_id": request_id,
                                                 "request": request.SerializeToString(),
                                                 "received": repr(time.time())})
        self.redis.xreadgroup(GROUP, self.replica_id, {self.stream: ">"}, count=10_000)
        self.set_state(request_id, gateway_pb2.REQUEST_STATE_QUEUED)
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def set_state(self, request_id: str, state: int, step: int = 0, total: int = 0,
                  error: gateway_pb2.ErrorInfo | None = None) -> None:
        key = self.fleet.key("request", request_id)
        mapping = {"state": state, "step": step, "total": total, "updated": repr(time.time())}
        if error is not None:
            mapping.update(error_code=error.code, error_message=error.message,
                           error_field=error.field)
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, STATE_TTL_S)
        pipe.execute()

    def finish(self, request_id: str, entry_id: str, stream: str, state: int,
               png: bytes | None = None, metadata: str = "",
               error: gateway_pb2.ErrorInfo | None = None) -> None:
        """Records the terminal state (and result), then acknowledges the entry."""
        if png is not None:
            self.redis.set(self.fleet.key("result", request_id), png, ex=self.result_ttl_s)
            self.redis.hset(self.fleet.key("request", request_id), "metadata", metadata)
        self.set_state(request_id, state, error=error)
        pipe = self.redis.pipeline()
        pipe.xack(stream, GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.execute()

    def status(self, request_id: str) -> tuple[dict[str, str], bytes | None]:
        raw = self.redis.hgetall(self.fleet.key("request", request_id))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        result = self.redis.get(self.fleet.key("result", request_id)) if fields else None
        return fields, result

    def orphans(self, live_gateways: set[str]) -> list[Orphan]:
        """Pending entries of gateway replicas that no longer heartbeat; claims them."""
        found = []
        for raw_key in self.redis.scan_iter(match=self.fleet.key("requests", "*"), count=100):
            stream = raw_key.decode()
            owner = stream.rsplit(":", 1)[-1]
            if owner in live_gateways or stream == self.stream:
                continue
            pending = self.redis.xpending_range(stream, GROUP, "-", "+", 1000)
            for item in pending:
                claimed = self.redis.xclaim(stream, GROUP, self.replica_id, 0,
                                            [item["message_id"]])
                for entry_id, fields in claimed:
                    request = gateway_pb2.GenerateRequest.FromString(fields[b"request"])
                    found.append(Orphan(stream, entry_id.decode(), request))
            if not pending:
                self.redis.delete(stream)
        return found
