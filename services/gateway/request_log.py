"""Every accepted request, recorded in Redis until it reaches a terminal state.

Each gateway replica appends to its own stream ``dfleet:requests:{replica}``
(consumer group ``gateway``) and reads the entry back at once, so it sits in
the group's pending list. It is acknowledged only at a terminal state.

A gateway also keeps its unfinished requests in memory, which carries them
through a Redis restart: when the group is gone (NOGROUP) it is created
again and the requests are recorded anew. Every few seconds the gateway
touches its pending entries (resets their idle time); an entry idle for
``claim_idle_s`` belongs to a gateway that stopped touching it, and a live
gateway claims it with XAUTOCLAIM, which hands one entry to one claimer only,
then moves it into its own stream (see :meth:`RequestLog.orphans`). So two
live gateways never run the same orphan.

``dfleet:request:{id}`` (hash) holds the state, step and error, for ``state_ttl_s``
after its last change; ``dfleet:result:{id}`` the PNG, for ``result_ttl_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis
from google.protobuf.message import DecodeError

from diffusion.v1 import gateway_pb2
from services.common.fleet_state import FleetState, redis_unavailable

GROUP = "gateway"
TERMINAL = {gateway_pb2.REQUEST_STATE_SUCCEEDED, gateway_pb2.REQUEST_STATE_FAILED,
            gateway_pb2.REQUEST_STATE_CANCELLED}
FINISH_RETRY_S = 30.0   # how long a terminal state waits for Redis to come back
RETRY_POLL_S = 0.5

log = logging.getLogger("dfleet.gateway")


@dataclass(frozen=True)
class Orphan:
    stream: str
    entry_id: str
    request: gateway_pb2.GenerateRequest


@dataclass
class _Held:
    """An unfinished request of this gateway: what to record again after a Redis restart."""

    entry_id: str
    payload: bytes
    state: int = gateway_pb2.REQUEST_STATE_QUEUED
    step: int = 0
    total: int = 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _is_nogroup(exc: redis.ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


class RequestLog:
    def __init__(self, fleet: FleetState, replica_id: str, result_ttl_s: int,
                 claim_idle_s: float = 30.0, state_ttl_s: int = 86400) -> None:
        self.fleet = fleet
        self.redis: redis.Redis = fleet.redis
        self.replica_id = replica_id
        self.result_ttl_s = result_ttl_s
        self.state_ttl_s = state_ttl_s
        self.claim_idle_s = claim_idle_s
        self.stream = fleet.key("requests", replica_id)
        self._held: dict[str, _Held] = {}
        self._lock = threading.RLock()
        with redis_unavailable("creating the request log"):
            self._create_group()

    def _create_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def record(self, request_id: str, request: gateway_pb2.GenerateRequest) -> str:
        """Appends the request and moves it into this replica's pending list."""
        payload = request.SerializeToString()
        with redis_unavailable("recording the request"), self._lock:
            entry_id = self._append(request_id, payload)
            self._held[request_id] = _Held(entry_id, payload)
            try:
                self._write_state(request_id, gateway_pb2.REQUEST_STATE_QUEUED)
            except BaseException:
                self._held.pop(request_id, None)
                raise
        return entry_id

    def _append(self, request_id: str, payload: bytes) -> str:
        fields = {"request_id": request_id, "request": payload, "received": repr(time.time())}
        entry_id = _text(self.redis.xadd(self.stream, fields))  # type: ignore[arg-type]
        try:
            self._take_new()
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            self._restore()   # Redis lost the group (a restart): the entry above is kept
        return entry_id

    def _take_new(self) -> None:
        self.redis.xreadgroup(GROUP, self.replica_id, {self.stream: ">"}, count=10_000)

    def _restore(self) -> None:
        """Creates the group again and records anew each held request Redis no longer has."""
        log.warning("the request log's consumer group is gone (Redis restarted?); "
                    "recording %d unfinished requests again", len(self._held))
        self._create_group()
        self._take_new()
        for request_id, held in self._held.items():
            if self.redis.xrange(self.stream, held.entry_id, held.entry_id):
                continue
            held.entry_id = _text(self.redis.xadd(self.stream, {  # type: ignore[arg-type]
                "request_id": request_id, "request": held.payload,
                "received": repr(time.time())}))
            self._write_state(request_id, held.state, held.step, held.total)
        self._take_new()

    def set_state(self, request_id: str, state: int, step: int = 0, total: int = 0,
                  error: gateway_pb2.ErrorInfo | None = None) -> None:
        """A non-terminal state: best effort (a progress write lost to a Redis restart is
        written again by the next one, or by :meth:`keep_alive`)."""
        with self._lock:
            held = self._held.get(request_id)
            if held is not None:
                held.state, held.step, held.total = state, step, total
        try:
            self._write_state(request_id, state, step, total, error)
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning("could not record the state of a request (Redis away)",
                        extra={"request_id": request_id})

    def _write_state(self, request_id: str, state: int, step: int = 0, total: int = 0,
                     error: gateway_pb2.ErrorInfo | None = None) -> None:
        key = self.fleet.key("request", request_id)
        mapping = {"state": state, "step": step, "total": total, "updated": repr(time.time())}
        if error is not None:
            mapping.update(error_code=error.code, error_message=error.message,
                           error_field=error.field)
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.state_ttl_s)
        pipe.execute()

    def finish(self, request_id: str, entry_id: str, stream: str, state: int,
               png: bytes | None = None, metadata: str = "",
               error: gateway_pb2.ErrorInfo | None = None) -> None:
        """Records the terminal state (and result), then acknowledges the entry; waits up to
        ``FINISH_RETRY_S`` for a Redis that is away (restarting)."""
        give_up = time.monotonic() + FINISH_RETRY_S
        while True:
            try:
                self._finish_once(request_id, entry_id, stream, state, png, metadata, error)
                return
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() >= give_up:
                    with redis_unavailable("recording the end of a request"):
                        raise
                time.sleep(RETRY_POLL_S)

    def _finish_once(self, request_id: str, entry_id: str, stream: str, state: int,
                     png: bytes | None, metadata: str,
                     error: gateway_pb2.ErrorInfo | None) -> None:
        if png is not None:
            self.redis.set(self.fleet.key("result", request_id), png, ex=self.result_ttl_s)
            self.redis.hset(self.fleet.key("request", request_id), "metadata", metadata)
        self._write_state(request_id, state, error=error)
        with self._lock:
            held = self._held.get(request_id)
            if held is not None:   # its entry may have been recorded anew since
                entry_id, stream = held.entry_id, self.stream
            pipe = self.redis.pipeline()
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            pipe.execute()
            self._held.pop(request_id, None)

    def status(self, request_id: str) -> tuple[dict[str, str], bytes | None]:
        with redis_unavailable("reading the request"):
            raw = self.redis.hgetall(self.fleet.key("request", request_id))
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            result = self.redis.get(self.fleet.key("result", request_id)) if fields else None
        return fields, result

    def keep_alive(self) -> None:
        """Touches this gateway's pending entries (resets their idle time, so no other
        gateway claims them); after a Redis restart, records them anew. Every heartbeat."""
        with self._lock:
            ids = [held.entry_id for held in self._held.values()]
            if not ids:
                return
            try:
                self.redis.xclaim(self.stream, GROUP, self.replica_id, 0, ids, justid=True)
            except redis.ResponseError as exc:
                if not _is_nogroup(exc):
                    raise
                self._restore()

    def orphans(self, live_gateways: set[str]) -> list[Orphan]:
        """Claims the entries of gateways that stopped heartbeating: their undelivered ones,
        and pending ones nobody touched for ``claim_idle_s``. Each claimed entry moves into
        this gateway's stream and is returned once, to this gateway only."""
        found = []
        for raw_key in self.redis.scan_iter(match=self.fleet.key("requests", "*"), count=100):
            stream = _text(raw_key)
            owner = stream.rsplit(":", 1)[-1]
            if owner in live_gateways or stream == self.stream:
                continue
            try:
                claimed = self._claim(stream)
            except redis.ResponseError as exc:
                if _is_nogroup(exc):
                    continue
                raise
            for entry_id, fields in claimed:
                orphan = self._adopt(stream, entry_id, fields)
                if orphan is not None:
                    found.append(orphan)
            if not self.redis.xlen(stream) and not self._pending(stream):
                self.redis.delete(stream)
        return found

    def _claim(self, stream: str) -> list[tuple[str, dict[bytes, bytes]]]:
        """XREADGROUP and XAUTOCLAIM each give an entry to one consumer only."""
        claimed: list[tuple[str, dict[bytes, bytes]]] = []
        for _name, entries in self.redis.xreadgroup(GROUP, self.replica_id, {stream: ">"},
                                                    count=1000) or []:
            claimed += [(_text(e), f) for e, f in entries if f]
        start = "0-0"
        while True:
            reply = self.redis.xautoclaim(stream, GROUP, self.replica_id,
                                          int(self.claim_idle_s * 1000), start, count=100)
            start = _text(reply[0])
            claimed += [(_text(e), f) for e, f in reply[1] if f]
            for deleted in reply[2] if len(reply) > 2 else []:
                self.redis.xack(stream, GROUP, deleted)
            if start == "0-0":
                return claimed

    def _adopt(self, stream: str, entry_id: str, fields: dict[bytes, bytes]) -> Orphan | None:
        try:
            request = gateway_pb2.GenerateRequest.FromString(fields[b"request"])
        except (KeyError, DecodeError):
            log.error("dropping an unreadable request log entry %s of %s", entry_id, stream)
            request = None
        with self._lock:
            if request is None:
                self.redis.xack(stream, GROUP, entry_id)
                self.redis.xdel(stream, entry_id)
                return None
            new_id = self._append(request.request_id, fields[b"request"])
            self._held[request.request_id] = _Held(new_id, fields[b"request"])
            pipe = self.redis.pipeline()
            pipe.xack(stream, GROUP, entry_id)
            pipe.xdel(stream, entry_id)
            pipe.execute()
        return Orphan(self.stream, new_id, request)

    def _pending(self, stream: str) -> int:
        try:
            return int(self.redis.xpending(stream, GROUP)["pending"])
        except redis.ResponseError:
            return 0
