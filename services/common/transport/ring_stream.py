"""One end of a per-stream step ring: messages of a small header and tensors, in order, both ways.

Each end owns the ring it writes (a :class:`SlotRing`, created at its first send and
replaced when the tensors' layout changes) and attaches to its peer's when a message
announces it; the header and the announcements travel over the stream's
:class:`RingSocket`, the tensors never do. No protobuf, no gRPC thread, no lease.

Why a slot is never read while it is written or after it was reused: a message is sent
only after its slot is written, and is read only after it arrived; every message carries
how many of the peer's messages this end has consumed, and an end writes its message n
only once the peer has consumed the message that used the same slot before (n - slots).
It raises instead of overwriting. A request/answer stream with at most ``slots``
unanswered requests never hits that: the answer to request k says that request k was
consumed, and request k says which answers were. A received message counts as consumed
once it was copied out (``receive(copy=True)``) or, when its views were handed out, at
this end's next send or receive.

At the end either end unlinks both ends' rings (unlinking is idempotent, and a peer's
mapping outlives the name), so a peer killed mid-stream leaves nothing behind.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from services.common.transport import metrics
from services.common.transport.errors import TransportError
from services.common.transport.ring_socket import RingSocket
from services.common.transport.shm import SegmentNamer
from services.common.transport.slot_ring import SlotLayout, SlotRing

DEFAULT_SLOTS = 2

_namer: SegmentNamer | None = None
_namer_lock = threading.Lock()


def _segment_namer() -> SegmentNamer:
    """One namer per process (a forked child gets its own, with its own pid in the names)."""
    global _namer
    with _namer_lock:
        if _namer is None or f"-{os.getpid()}-" not in _namer.prefix:
            _namer = SegmentNamer()
        return _namer


@dataclass
class _Ring:
    ring: SlotRing
    first: int  # number of the first message written into it

    def slot(self, n: int) -> int:
        return (n - self.first) % self.ring.slots


class RingStream:
    """One thread may send while another receives (a blocked receive never holds up a send);
    :meth:`close` from any thread. Views (``copy=False``) are for an end that sends and
    receives on one thread: they count as consumed at its next call."""

    def __init__(self, sock: RingSocket, role: str = "", slots: int = DEFAULT_SLOTS) -> None:
        if slots < 1:
            raise ValueError(f"slots={slots} must be >= 1")
        self.role = role
        self.slots = slots
        self._sock = sock
        self._send_lock = threading.Lock()
        self._receive_lock = threading.Lock()
        self._own: _Ring | None = None
        self._retired: list[tuple[int, SlotRing]] = []  # (last message in it, ring)
        self._peer: _Ring | None = None
        self._peer_names: set[str] = set()
        self._sent = 0            # messages this end sent
        self._peer_consumed = 0   # of them, consumed by the peer
        self._received = 0        # messages received from the peer
        self._consumed = 0        # of them, consumed here
        self._closed = False
        metrics.RINGS_OPEN.labels(role).inc()

    def send(self, header: dict[str, Any], tensors: Sequence[torch.Tensor]) -> None:
        """Writes ``tensors`` into the next slot, then signals the peer with ``header``."""
        with self._send_lock:
            self._check_open()
            self._settle_views()
            n = self._sent
            message: dict[str, Any] = {"n": n, "c": self._consumed, "h": header}
            own = self._ring_for(tensors, n, message)
            if n - self.slots >= own.first and self._peer_consumed <= n - self.slots:
                raise TransportError(
                    f"ring full: message {n} would overwrite message {n - self.slots}, which "
                    f"the peer has not consumed ({self._peer_consumed} consumed)")
            own.ring.write(own.slot(n), tensors)
            # counted before it leaves: the answer may come back (on another thread) before
            # this thread runs again; a failed send ends the stream anyway
            self._sent += 1
            self._sock.send(message)
            nbytes = sum(t.numel() * t.element_size() for t in tensors)
            metrics.EXPORTED_BYTES.labels(self.role, "ring").inc(nbytes)
            metrics.EXPORTED_TENSORS.labels(self.role, "ring").inc(len(tensors))

    def receive(self, timeout: float | None = None, copy: bool = True
                ) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """The next message's header and tensors: copies, or views valid until this end's
        next send or receive. RingClosed when the peer is gone, TimeoutError after
        ``timeout`` seconds."""
        with self._receive_lock:
            self._check_open()
            self._settle_views()
            message = self._sock.receive(timeout)
            n = message.get("n")
            if n != self._received:
                raise TransportError(f"ring message {n} arrived, {self._received} was next")
            self._note_peer_consumed(message.get("c"))
            if "ring" in message:
                self._attach(message["ring"], n)
            if self._peer is None:
                raise TransportError(f"ring message {n} came before any ring was announced")
            self._received += 1
            slot = self._peer.slot(n)
            tensors = self._peer.ring.copy_out(slot) if copy else self._peer.ring.views(slot)
            if copy:
                self._consumed += 1
            metrics.LOADED_BYTES.labels(self.role, "ring").inc(self._peer.ring.layout.slot_bytes)
            header = message.get("h")
            return (header if isinstance(header, dict) else {}), tensors

    def shutdown(self) -> None:
        """Wakes a receive blocked in another thread (it raises RingClosed)."""
        self._sock.shutdown()

    def close(self) -> None:
        """Ends the stream: unlinks this end's rings and every ring of the peer's it saw.
        Safe to call twice and from any thread."""
        self._sock.shutdown()
        with self._send_lock, self._receive_lock:
            if self._closed:
                return
            self._closed = True
            self._sock.close()
            own = [r for _, r in self._retired] + ([self._own.ring] if self._own else [])
            for ring in own:
                ring.close(unlink=True)
            if self._peer is not None:
                self._peer.ring.close(unlink=True)
            for name in self._peer_names:
                SlotRing.unlink_name(name)
            self._own, self._peer, self._retired = None, None, []
        metrics.RINGS_OPEN.labels(self.role).dec()

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("ring stream is closed")

    def _settle_views(self) -> None:
        if self._consumed < self._received:  # views of the last message were handed out
            self._consumed = self._received

    def _note_peer_consumed(self, consumed: Any) -> None:
        if not isinstance(consumed, int) or not self._peer_consumed <= consumed <= self._sent:
            raise TransportError(f"ring peer reports {consumed!r} consumed of {self._sent} sent")
        self._peer_consumed = consumed
        while self._retired and self._retired[0][0] < consumed:
            self._retired.pop(0)[1].close(unlink=True)

    def _ring_for(self, tensors: Sequence[torch.Tensor], n: int,
                  message: dict[str, Any]) -> _Ring:
        """This end's ring for ``tensors``: a new one (announced in ``message``) at the first
        send or when the layout changed; the old one lives until its messages are consumed."""
        if self._own is not None and self._own.ring.layout.fits(tensors):
            return self._own
        layout = SlotLayout.of(tensors)
        ring = SlotRing.create(_segment_namer(), layout, self.slots, self.role)
        if self._own is not None:
            self._retired.append((n - 1, self._own.ring))
        self._own = _Ring(ring, first=n)
        message["ring"] = {"segment": ring.name, "slots": self.slots,
                           "layout": layout.to_wire()}
        return self._own

    def _attach(self, announced: Any, n: int) -> None:
        if not isinstance(announced, dict):
            raise TransportError(f"bad ring announcement {announced!r}")
        name, slots = announced.get("segment"), announced.get("slots")
        if not isinstance(name, str) or not isinstance(slots, int) or slots < 1:
            raise TransportError(f"bad ring announcement {announced!r}")
        self._peer_names.add(name)
        ring = SlotRing.attach(name, SlotLayout.from_wire(announced.get("layout")), slots,
                               self.role)
        if self._peer is not None:
            self._peer.ring.close(unlink=False)  # its owner unlinks it once consumed
        self._peer = _Ring(ring, first=n)
