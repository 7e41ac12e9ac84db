"""Channel options, TLS and the token, shared by the sync and asyncio clients."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


def deadline(call_timeout: float | None, client_timeout: float | None) -> float | None:
    """The per-call timeout in seconds: the call's when given, else the client's."""
    return client_timeout if call_timeout is None else call_timeout


def gateway_channel(address: str, tls_ca: str | None, *, aio: bool = False,
                    interceptors: Any = None) -> Any:
    """A channel to a gateway: TLS verified against the PEM CA ``tls_ca`` (None: the
    ``DFLEET_TLS_CA`` variable; empty: plaintext). ``interceptors``: grpc.aio only."""
    ca = os.environ.get("DFLEET_TLS_CA", "") if tls_ca is None else tls_ca
    extra = {"interceptors": interceptors} if aio and interceptors else {}
    module: Any = grpc.aio if aio else grpc
    if not ca:
        return module.insecure_channel(address, options=list(CHANNEL_OPTIONS), **extra)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
    return module.secure_channel(address, credentials, options=list(CHANNEL_OPTIONS), **extra)


def with_token(metadata: tuple[tuple[str, str], ...], token: str | None
               ) -> tuple[tuple[str, str], ...]:
    """``metadata`` plus ``authorization: Bearer <token>`` (None: the ``DFLEET_TOKEN``
    variable; empty: no token)."""
    token = os.environ.get("DFLEET_TOKEN", "") if token is None else token
    return (*metadata, ("authorization", f"Bearer {token}")) if token else metadata
