"""Token authentication for the gateway's public API, with a rate limit and a priority each.

Clients send ``authorization: Bearer <token>``. The tokens file (YAML, e.g. a
Kubernetes Secret mounted as a file; re-read when it changes) lists them:

    tokens:
      - name: batch-jobs          # shown in logs and errors, never the token itself
        token: "a long random string"
        rate_per_s: 2             # Generate/RegisterTemplate calls per second (0 = no limit)
        burst: 4                  # calls allowed at once above the rate
        priority: low             # high | normal | low: share of max_inflight it may fill
        allow: [generate, read]   # generate, read (GetRequest, ListModels, ListWorkflows,
                                  # GetWorkflow), cancel, templates, workflows (Register-
                                  # and ImportWorkflow); default: all

No token: UNAUTHENTICATED; an unknown one: UNAUTHENTICATED; a call its token may
not make: PERMISSION_DENIED; over its rate, or over its priority's share of the
gateway while it is busy: RESOURCE_EXHAUSTED. Health checks, reflection and the
tensor-lease calls of fleet peers need no token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import yaml

log = logging.getLogger("dfleet.gateway")

PRIORITY_SHARE = {"high": 1.0, "normal": 0.9, "low": 0.5}
PERMISSIONS = {"Generate": "generate", "RegisterTemplate": "templates", "Cancel": "cancel",
               "GetRequest": "read", "ListModels": "read", "RegisterWorkflow": "workflows",
               "ImportWorkflow": "workflows", "ListWorkflows": "read", "GetWorkflow": "read"}
ALL_PERMISSIONS = frozenset(PERMISSIONS.values())
RATED = {"Generate", "RegisterTemplate", "RegisterWorkflow", "ImportWorkflow"}
GATEWAY_SERVICE = "/diffusion.v1.Gateway/"
RELOAD_CHECK_S = 5.0


@dataclass
class TokenEntry:
    name: str
    rate_per_s: float = 0.0
    burst: float = 1.0
    priority: str = "normal"
    allow: frozenset[str] = ALL_PERMISSIONS
    _tokens: float = field(default=0.0, repr=False)
    _refilled: float = field(default=0.0, repr=False)

    def take(self, now: float) -> float:
        """0 when a call may go now (one taken from the bucket); else seconds to wait."""
        if self.rate_per_s <= 0:
            return 0.0
        if self._refilled == 0.0:
            self._tokens, self._refilled = self.burst, now
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate_per_s)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def load_tokens(path: str) -> dict[bytes, TokenEntry]:
    """The tokens file, checked: each entry's problem is named with its position."""
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    entries = raw.get("tokens") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: wants a non-empty list under 'tokens'")
    found: dict[bytes, TokenEntry] = {}
    for i, item in enumerate(entries):
        where = f"{path}: tokens[{i}]"
        if not isinstance(item, dict) or not item.get("name") or not item.get("token"):
            raise ValueError(f"{where}: needs a name and a token")
        if len(str(item["token"])) < 16:
            raise ValueError(f"{where} ({item['name']}): a token needs at least 16 characters")
        priority = str(item.get("priority", "normal"))
        if priority not in PRIORITY_SHARE:
            raise ValueError(f"{where}.priority: {priority!r} is not one of "
                             f"{sorted(PRIORITY_SHARE)}")
        allow = frozenset(item.get("allow", sorted(ALL_PERMISSIONS)))
        if not allow <= ALL_PERMISSIONS:
            raise ValueError(f"{where}.allow: unknown {sorted(allow - ALL_PERMISSIONS)}; "
                             f"choose from {sorted(ALL_PERMISSIONS)}")
        rate, burst = float(item.get("rate_per_s", 0)), float(item.get("burst", 1))
        if rate < 0 or burst < 1:
            raise ValueError(f"{where}: rate_per_s must be >= 0 and burst >= 1")
        digest = _digest(str(item["token"]))
        if digest in found:
            raise ValueError(f"{where}: the same token as {found[digest].name!r}")
        found[digest] = TokenEntry(str(item["name"]), rate, burst, priority, allow)
    return found


class TokenFile:
    """The tokens of a file, re-read (at most every few seconds) when it changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime = os.stat(path).st_mtime
        self._tokens = load_tokens(path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def lookup(self, token: str) -> TokenEntry | None:
        with self._lock:
            self._maybe_reload()
            digest = _digest(token)
            for known, entry in self._tokens.items():
                if hmac.compare_digest(known, digest):
                    return entry
        return None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        try:
            mtime = os.stat(self.path).st_mtime
            if mtime != self._mtime:
                fresh = load_tokens(self.path)
                for digest, entry in fresh.items():   # keep the buckets of known tokens
                    old = self._tokens.get(digest)
                    if old is not None:
                        entry._tokens, entry._refilled = old._tokens, old._refilled
                self._tokens, self._mtime = fresh, mtime
                log.info("reloaded %d tokens from %s", len(fresh), self.path)
        except (OSError, ValueError, yaml.YAMLError):
            log.error("could not reload the tokens file; keeping the previous tokens",
                      exc_info=True)


def _refusal(handler: Any, code: grpc.StatusCode, message: str) -> Any:
    """A handler of the same kind as ``handler`` that answers ``code`` at once."""
    def unary(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    def streaming(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)
        yield  # pragma: no cover - abort raises

    kinds = (("unary_unary", grpc.unary_unary_rpc_method_handler, unary),
             ("unary_stream", grpc.unary_stream_rpc_method_handler, streaming),
             ("stream_unary", grpc.stream_unary_rpc_method_handler, unary),
             ("stream_stream", grpc.stream_stream_rpc_method_handler, streaming))
    for attribute, make, fn in kinds:
        if getattr(handler, attribute):
            return make(fn, request_deserializer=handler.request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler


class TokenAuth(grpc.ServerInterceptor):
    """Checks the token of every Gateway call before its handler runs."""

    def __init__(self, tokens: TokenFile, max_inflight: int) -> None:
        self.tokens = tokens
        self.max_inflight = max_inflight
        self.inflight: Callable[[], int] = lambda: 0
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable[..., Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method = details.method or ""
        if handler is None or not method.startswith(GATEWAY_SERVICE):
            return handler
        name = method[len(GATEWAY_SERVICE):]
        refusal = self._check(name, dict(details.invocation_metadata or ()))
        return handler if refusal is None else _refusal(handler, *refusal)

    def _check(self, method: str, metadata: dict[str, Any]
               ) -> tuple[grpc.StatusCode, str] | None:
        header = str(metadata.get("authorization", ""))
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return (grpc.StatusCode.UNAUTHENTICATED,
                    "a token is required: send the metadata 'authorization: Bearer <token>'")
        entry = self.tokens.lookup(token.strip())
        if entry is None:
            return grpc.StatusCode.UNAUTHENTICATED, "unknown token"
        permission = PERMISSIONS.get(method, "")
        if permission not in entry.allow:
            return (grpc.StatusCode.PERMISSION_DENIED,
                    f"token {entry.name!r} may not call {method} (it allows "
                    f"{', '.join(sorted(entry.allow))})")
        if method not in RATED:
            return None
        limit = int(self.max_inflight * PRIORITY_SHARE[entry.priority])
        if method == "Generate" and self.inflight() >= limit:
            return (grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the gateway is busy: {entry.priority}-priority token {entry.name!r} "
                    f"may fill {limit} of {self.max_inflight} slots; retry later")
        with self._lock:
            wait_s = entry.take(time.monotonic())
        if wait_s > 0:
            return (grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"token {entry.name!r} is over its rate of {entry.rate_per_s:g} calls/s; "
                    f"retry in {wait_s:.2f} s")
        return None
