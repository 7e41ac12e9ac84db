"""Channel options shared by the sync and asyncio clients."""

from __future__ import annotations

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


def deadline(call_timeout: float | None, client_timeout: float | None) -> float | None:
    """The per-call timeout in seconds: the call's when given, else the client's."""
    return client_timeout if call_timeout is None else call_timeout
