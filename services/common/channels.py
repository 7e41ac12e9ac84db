"""One gRPC channel per peer address, shared by every call of a process."""

from __future__ import annotations

import threading

import grpc

from dfleet.tracing import traced_channel
from services.common.telemetry import tracing
from services.common.transport.importer import MESSAGE_SIZE_OPTIONS

# One message-size limit for every server and channel of a process: the transport's.
CHANNEL_OPTIONS = MESSAGE_SIZE_OPTIONS


class ChannelPool:
    def __init__(self) -> None:
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def get(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
                if tracing.enabled():
                    channel = traced_channel(channel, address)
                self._channels[address] = channel
            return channel

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
