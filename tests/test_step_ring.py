"""The step ring's parts: framed socket messages, slot layouts, and the ring stream's rules.

Covers: a stray connection without the offer's token is never taken for the peer; messages
and tensors (several dtypes, a 0-d tensor) arrive in order and exact; a received view stays
intact while its producer tries to write past the consumer (refused with "ring full", never
overwritten); a request/answer exchange with at most ``slots`` unanswered requests never
hits that limit, checked against every value written; a change of layout moves to a new
segment and the old one is unlinked once consumed; either end closing unlinks every
segment of the stream, and a receive sees the peer's close as RingClosed.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest
import torch

from services.common.transport.errors import TransportError
from services.common.transport.ring_socket import RingClosed, RingListener, RingSocket, connect
from services.common.transport.ring_stream import RingStream
from services.common.transport.slot_ring import SlotLayout


def _segments() -> set[str]:
    mine = f"-{os.getpid()}-"
    return {n for n in os.listdir("/dev/shm") if n.startswith("dfleet-") and mine in n}


@pytest.fixture
def pair() -> Iterator[tuple[RingStream, RingStream]]:
    listener = RingListener()
    accepted: list[RingSocket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept(30)))
    thread.start()
    peer = connect(listener.name, listener.token)
    thread.join(30)
    a, b = RingStream(accepted[0], "test-a"), RingStream(peer, "test-b")
    before = _segments()
    yield a, b
    a.close()
    b.close()
    assert _segments() <= before


def test_a_connection_without_the_token_is_not_taken() -> None:
    listener = RingListener()
    stray = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stray.connect("\0" + listener.name)
    RingSocket(stray).send({"token": "00" * 16})
    accepted: list[RingSocket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept(30)))
    thread.start()
    peer = connect(listener.name, listener.token)
    thread.join(30)
    peer.send({"hello": 1})
    assert accepted[0].receive(timeout=30) == {"hello": 1}
    for end in (peer, accepted[0]):
        end.close()
    stray.close()


def test_connect_refuses_names_that_are_not_ring_sockets() -> None:
    with pytest.raises(TransportError, match="not a ring socket"):
        connect("some-other-socket", b"x")


def test_messages_arrive_in_order_and_exact(pair: tuple[RingStream, RingStream]) -> None:
    a, b = pair
    tensors = [torch.randn(2, 4, 8, 8), torch.arange(10, dtype=torch.int64),
               torch.randn(3, 5).to(torch.bfloat16), torch.tensor(7.5, dtype=torch.float64)]
    for step in range(4):
        a.send({"step": step}, [t + step for t in tensors])
        header, got = b.receive(timeout=30)
        assert header == {"step": step}
        for expected, value in zip(tensors, got, strict=True):
            assert value.dtype == expected.dtype and torch.equal(value, expected + step)
        b.send({"ack": step}, [got[0] * 2])
        header, (back,) = a.receive(timeout=30)
        assert header == {"ack": step} and torch.equal(back, (tensors[0] + step) * 2)


def test_a_view_is_never_overwritten(pair: tuple[RingStream, RingStream]) -> None:
    a, b = pair
    a.send({}, [torch.full((64,), 0.0)])
    a.send({}, [torch.full((64,), 1.0)])
    _, (first,) = b.receive(copy=False)
    with pytest.raises(TransportError, match="ring full"):
        a.send({}, [torch.full((64,), 2.0)])   # its slot holds message 0, not consumed
    assert torch.equal(first, torch.full((64,), 0.0))
    b.send({}, [torch.zeros(1)])               # says message 0 was consumed
    a.receive()
    a.send({}, [torch.full((64,), 2.0)])
    _, (second,) = b.receive(copy=True)
    _, (third,) = b.receive(copy=True)
    assert torch.equal(second, torch.full((64,), 1.0))
    assert torch.equal(third, torch.full((64,), 2.0))


def test_request_answer_stream_with_two_unanswered_requests(
        pair: tuple[RingStream, RingStream]) -> None:
    """The stale ControlNet schedule: request t+1 goes out before the answer to t is read."""
    a, b = pair
    errors: list[BaseException] = []

    def answer() -> None:
        try:
            while True:
                header, (x,) = b.receive(timeout=30, copy=False)
                assert torch.equal(x, torch.full((4, 16), float(header["step"])))
                b.send({"step": header["step"]}, [x * 3, x.sum().reshape(1)])
        except RingClosed:
            return
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=answer)
    thread.start()
    a.send({"step": 0}, [torch.full((4, 16), 0.0)])
    for step in range(1, 200):
        a.send({"step": step}, [torch.full((4, 16), float(step))])
        header, (y, total) = a.receive(timeout=30)
        assert header["step"] == step - 1
        assert torch.equal(y, torch.full((4, 16), 3.0 * (step - 1)))
        assert total.item() == 64.0 * (step - 1)
    a.receive(timeout=30)
    a.close()
    thread.join(30)
    assert not errors, errors


def test_a_new_layout_moves_to_a_new_segment(pair: tuple[RingStream, RingStream]) -> None:
    a, b = pair
    a.send({}, [torch.ones(8)])
    b.receive()
    b.send({}, [torch.zeros(1)])
    a.receive()
    first = _segments()
    a.send({}, [torch.ones(2, 100)])
    _, (x,) = b.receive()
    assert x.shape == (2, 100)
    b.send({}, [torch.zeros(1)])
    a.receive()   # the peer consumed the last message of the old ring: it goes
    a.send({}, [torch.ones(2, 100)])
    b.receive()
    assert len(_segments() - first) == 1 and len(first - _segments()) == 1


def test_closing_one_end_ends_the_other(pair: tuple[RingStream, RingStream]) -> None:
    a, b = pair
    a.send({}, [torch.ones(4)])
    b.receive()
    b.send({}, [torch.ones(4)])
    a.close()
    with pytest.raises(RingClosed):
        b.receive(timeout=30)
    with pytest.raises(RingClosed):
        for _ in range(3):  # the first write may still reach the kernel's buffer
            b.send({}, [torch.ones(4)])


def test_layout_round_trip() -> None:
    tensors = [torch.zeros(3, 7, dtype=torch.float16), torch.zeros((), dtype=torch.int32)]
    layout = SlotLayout.of(tensors)
    assert SlotLayout.from_wire(layout.to_wire()) == layout
    assert all(t.offset % 64 == 0 for t in layout.tensors)
    with pytest.raises(TransportError):
        SlotLayout.from_wire([[999, [1]]])
    with pytest.raises(TransportError):
        SlotLayout.from_wire([[1, [-1]]])


def test_each_end_sends_and_receives_on_its_own_threads(
        pair: tuple[RingStream, RingStream]) -> None:
    """The CFG pass pattern: a step loop sends while a reader thread takes the answers, and
    the partner's reader and answering threads are two more."""
    a, b = pair
    answers: list[torch.Tensor] = []
    got_answer = threading.Semaphore(0)
    inbox: list[tuple[int, torch.Tensor]] = []
    got_step = threading.Semaphore(0)
    errors: list[BaseException] = []

    def guarded(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except RingClosed:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
        return run

    def a_reader() -> None:
        while True:
            answers.append(a.receive(timeout=30)[1][0])
            got_answer.release()

    def b_reader() -> None:
        while True:
            header, (x,) = b.receive(timeout=30)
            inbox.append((header["step"], x))
            got_step.release()

    def b_answerer() -> None:
        for _ in range(300):
            assert got_step.acquire(timeout=30)
            step, x = inbox.pop(0)
            b.send({"step": step}, [x + 1])

    threads = [threading.Thread(target=guarded(f)) for f in (a_reader, b_reader, b_answerer)]
    for thread in threads:
        thread.start()
    for step in range(300):
        a.send({"step": step}, [torch.full((2, 8), float(step))])
        assert got_answer.acquire(timeout=30)
        assert torch.equal(answers[-1], torch.full((2, 8), step + 1.0))
    a.close()
    b.close()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
