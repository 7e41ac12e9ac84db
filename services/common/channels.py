"""One gRPC channel per peer address, shared by every call of a process.

The pool also watches each channel's connectivity: a peer whose connection
failed (its process died, its port refuses) is *unreachable* from that moment
until it heartbeats again, and :class:`~services.common.fleet_state.FleetState`
leaves it out of placement at once instead of for the heartbeat TTL.
"""

from __future__ import annotations

import functools
import threading
import time

import grpc

from dfleet.tracing import traced_channel
from services.common.telemetry import tracing
from services.common.tls import TlsFiles, open_channel
from services.common.transport.importer import MESSAGE_SIZE_OPTIONS

# One message-size limit for every server and channel of a process: the transport's.
CHANNEL_OPTIONS = MESSAGE_SIZE_OPTIONS
_FAILED = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


class ChannelPool:
    def __init__(self, tls: TlsFiles | None = None) -> None:
        self.tls = tls
        self._channels: dict[str, grpc.Channel] = {}
        self._raw: dict[str, grpc.Channel] = {}   # the watched channel under each (untraced)
        self._failed_at: dict[str, float] = {}   # address -> unix time its connection failed
        self._probes: dict[str, grpc.Future] = {}  # reconnect attempts after a close
        self._renew: set[str] = set()    # addresses whose peer came back: new channel
        self._lock = threading.Lock()

    def get(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is not None and address in self._renew:
                # The peer at this address came back (a restart on the same port) while the
                # channel waits out its reconnect backoff: a new channel connects at once.
                self._renew.discard(address)
                self._channels.pop(address)
                self._raw.pop(address)
                channel.close()
                channel = None
            if channel is None:
                raw = open_channel(address, self.tls, CHANNEL_OPTIONS)
                self._raw[address] = raw
                raw.subscribe(functools.partial(self._on_state, address, raw),
                              try_to_connect=True)
                channel = traced_channel(raw, address) if tracing.enabled() else raw
                self._channels[address] = channel
            return channel

    def _on_state(self, address: str, raw: grpc.Channel,
                  state: grpc.ChannelConnectivity) -> None:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None or self._raw.get(address) is not raw:
                return   # a channel closed since (its SHUTDOWN says nothing of the peer)
            if state in _FAILED:
                self._failed_at.setdefault(address, time.time())
            elif state == grpc.ChannelConnectivity.READY:
                self._failed_at.pop(address, None)
        if state == grpc.ChannelConnectivity.IDLE:
            # The connection closed (the peer may have died): reconnect now, so that a dead
            # peer shows as a failed connection before the next request is placed there.
            with self._lock:
                probe = self._probes.get(address)
                if probe is None or probe.done():
                    self._probes[address] = grpc.channel_ready_future(channel)

    def mark_failed(self, address: str) -> None:
        """A call to ``address`` found it dead: leave it out until it heartbeats again."""
        with self._lock:
            self._failed_at.setdefault(address, time.time())

    def reachable(self, address: str, heartbeat: float) -> bool:
        """False when the connection to ``address`` failed after its last heartbeat (unix
        time): a dead peer never heartbeats again; a live one is back within a beat."""
        with self._lock:
            failed = self._failed_at.get(address)
            if failed is not None and heartbeat > failed:
                del self._failed_at[address]
                self._renew.add(address)
        return failed is None or heartbeat > failed

    def fresh(self, address: str) -> grpc.Channel:
        """A new channel of its own (the caller closes it), for an answer that no reconnect
        backoff of the shared one can colour: is the peer there now?"""
        return open_channel(address, self.tls, CHANNEL_OPTIONS)

    def close(self) -> None:
        with self._lock:
            channels = list(self._channels.values())
            self._channels.clear()
            self._raw.clear()
            self._failed_at.clear()
            for probe in self._probes.values():
                probe.cancel()
            self._probes.clear()
        for channel in channels:
            channel.close()
