"""The signal path of a step ring: one local stream socket per stream, small framed messages.

The offering end listens on a fresh abstract unix socket name (nothing on the
file system to clean up) and hands the name and a random token to its peer over
gRPC; the peer connects and sends the token back, so a stray connection is
never taken for the peer. Messages are length-prefixed JSON objects of a few
dozen bytes; the tensors travel in the ring's shared memory.

A socket is also how each end learns that the other is gone: the kernel closes
a dead process's end, and a blocked receive returns end-of-stream at once.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import sys
import time
from typing import Any

from services.common.transport.errors import TransportError

SOCKET_PREFIX = "dfleet-ring-"
MAX_MESSAGE_BYTES = 1 << 20
_LENGTH = struct.Struct("<I")

SUPPORTED = sys.platform.startswith("linux")  # abstract socket names are Linux-only


class RingClosed(TransportError):
    """The peer closed its end of the ring's socket, or its process ended."""


class RingSocket:
    """One end of a connected ring socket. One thread sends, one receives."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        try:
            self._sock.sendall(_LENGTH.pack(len(data)) + data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise RingClosed(f"ring peer is gone ({e})") from None
        except OSError as e:
            raise RingClosed(f"ring socket failed: {e}") from None

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message; RingClosed at end of stream, TimeoutError after ``timeout`` s."""
        self._sock.settimeout(timeout)
        (length,) = _LENGTH.unpack(self._read(_LENGTH.size))
        if length > MAX_MESSAGE_BYTES:
            raise TransportError(f"ring message of {length} bytes is over the limit")
        try:
            message = json.loads(self._read(length))
        except ValueError as e:
            raise TransportError(f"ring message is not JSON: {e}") from None
        if not isinstance(message, dict):
            raise TransportError("ring message is not a JSON object")
        return message

    def shutdown(self) -> None:
        """Ends both directions: a receive blocked in another thread returns RingClosed."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        self._sock.close()

    def _read(self, n: int) -> bytes:
        buffer = bytearray(n)
        view, got = memoryview(buffer), 0
        while got < n:
            try:
                count = self._sock.recv_into(view[got:])
            except TimeoutError:
                raise
            except (ConnectionResetError, OSError) as e:
                raise RingClosed(f"ring socket failed: {e}") from None
            if count == 0:
                raise RingClosed("ring peer closed its end")
            got += count
        return bytes(buffer)


class RingListener:
    """The offering end, until its peer connects: ``name`` and ``token`` go to the peer."""

    def __init__(self) -> None:
        if not SUPPORTED:
            raise TransportError("step rings need Linux abstract unix sockets")
        self.name = SOCKET_PREFIX + secrets.token_hex(16)
        self.token = secrets.token_bytes(16)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind("\0" + self.name)
            self._sock.listen(4)
        except OSError:
            self._sock.close()
            raise

    def accept(self, timeout: float) -> RingSocket:
        """The peer's connection (the first one that shows the token); TimeoutError after
        ``timeout`` seconds. Stops listening either way."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the ring peer did not connect")
                self._sock.settimeout(left)
                conn, _ = self._sock.accept()
                peer = RingSocket(conn)
                try:
                    hello = peer.receive(timeout=max(0.001, deadline - time.monotonic()))
                except (TransportError, TimeoutError):
                    peer.close()
                    continue
                if secrets.compare_digest(str(hello.get("token", "")), self.token.hex()):
                    peer._sock.settimeout(None)
                    return peer
                peer.close()
        finally:
            self.close()

    def close(self) -> None:
        self._sock.close()


def connect(name: str, token: bytes, timeout: float = 10.0) -> RingSocket:
    """The peer's end: connects to an offered ring socket and shows the token."""
    if not SUPPORTED:
        raise TransportError("step rings need Linux abstract unix sockets")
    if not name.startswith(SOCKET_PREFIX) or "\0" in name:
        raise TransportError(f"ring socket name {name!r} is not a ring socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect("\0" + name)
    except OSError as e:
        sock.close()
        raise TransportError(f"cannot connect to ring socket {name}: {e}") from None
    sock.settimeout(None)
    peer = RingSocket(sock)
    peer.send({"token": token.hex()})
    return peer
