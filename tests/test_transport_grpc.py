"""The transport across processes: a producer process hosts a real TensorLeases gRPC server on
a loopback port; this process loads its refs and releases the leases by RPC. Covers values
surviving the trip, releases reaching the producer, 1,000 mixed inline/shm transfers leaving
no lease and no segment behind after close, and a failing release being counted, not raised."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent import futures
from multiprocessing.connection import Connection

import grpc
import pytest
import torch
from prometheus_client import REGISTRY

from diffusion.v1 import tensor_pb2
from services.common.transport import (
    TensorExporter,
    TensorImporter,
    add_tensor_leases,
    local_peer,
)
from services.common.transport.shm import SHM_DIR

SIZES = [10, 3_000, 40_000, 70_000]  # float32 elements: inline, inline, shm, shm


def _value(i: int) -> torch.Tensor:
    return torch.arange(SIZES[i % len(SIZES)], dtype=torch.float32) + i


def _segments(prefix: str) -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]


def _producer(conn: Connection) -> None:
    """Runs in the child: exports on command, reports its lease and segment counts."""
    exporter = TensorExporter("", role="grpc-test")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_tensor_leases(server, exporter)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    exporter.owner_address = f"127.0.0.1:{port}"
    conn.send(exporter.segment_prefix)
    while True:
        command, arg = conn.recv()
        if command == "export":
            i, peer = arg
            ref = exporter.export(_value(i), tensor_pb2.PeerInfo.FromString(peer))
            conn.send(ref.SerializeToString())
        elif command == "stats":
            conn.send((exporter.active_leases(), len(_segments(exporter.segment_prefix))))
        elif command == "close":
            exporter.close()
            server.stop(grace=None)
            conn.send(None)
            return


class Producer:
    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_producer, args=(child,), daemon=True)
        self.process.start()
        assert self.conn.poll(60), "producer did not start"
        self.prefix: str = self.conn.recv()

    def export(self, i: int, peer: tensor_pb2.PeerInfo) -> tensor_pb2.TensorRef:
        self.conn.send(("export", (i, peer.SerializeToString())))
        return tensor_pb2.TensorRef.FromString(self.conn.recv())

    def stats(self) -> tuple[int, int]:
        self.conn.send(("stats", None))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(("close", None))
        self.conn.recv()
        self.process.join(30)


@pytest.fixture(scope="module")
def shared_producer():
    producer = Producer()
    yield producer
    producer.close()


@pytest.fixture
def producer():
    producer = Producer()
    yield producer
    if producer.process.is_alive():
        producer.close()


def test_release_rpc_reaches_the_producer(shared_producer) -> None:
    producer = shared_producer
    importer = TensorImporter()
    peer = local_peer(inline_max_bytes=1)
    try:
        refs = [producer.export(i, peer) for i in range(4)]
        assert {r.WhichOneof("payload") for r in refs} == {"host_shm"}
        assert producer.stats()[0] == 4
        for i, ref in enumerate(refs[:3]):
            assert torch.equal(importer.load(ref), _value(i))
        assert importer.flush()
        assert producer.stats()[0] == 1
        importer.release(refs[3:])
        assert importer.flush()
        assert producer.stats()[0] == 0
    finally:
        importer.close()


def test_segments_are_reused_across_transfers(shared_producer) -> None:
    producer = shared_producer
    importer = TensorImporter()
    peer = local_peer(inline_max_bytes=1)
    try:
        names = set()
        for _ in range(20):
            ref = producer.export(2, peer)
            names.add(ref.host_shm.segment)
            assert torch.equal(importer.load(ref), _value(2))
            assert importer.flush()
        assert len(names) == 1
    finally:
        importer.close()


def test_thousand_transfers_leave_nothing_behind(producer) -> None:
    importer = TensorImporter()
    peer = local_peer(inline_max_bytes=100_000)
    kinds = set()
    try:
        for i in range(1000):
            ref = producer.export(i, peer)
            kinds.add(ref.WhichOneof("payload"))
            out = importer.load(ref)
            if not torch.equal(out, _value(i)):
                pytest.fail(f"transfer {i} ({ref.WhichOneof('payload')}) corrupted")
        assert kinds == {"inline", "host_shm"}
        assert importer.flush()
        leases, segments = producer.stats()
        assert leases == 0
        assert 1 <= segments < 1000
        producer.close()
        assert producer.process.exitcode == 0
        assert _segments(producer.prefix) == []
    finally:
        importer.close()


def test_failed_release_is_counted_not_raised() -> None:
    exporter = TensorExporter("127.0.0.1:1")  # nothing listens there
    importer = TensorImporter(role="unreachable-owner")
    try:
        ref = exporter.export(torch.ones(100_000), local_peer())
        assert torch.equal(importer.load(ref), torch.ones(100_000))
        assert importer.flush()
        failures = REGISTRY.get_sample_value(
            "dfleet_transport_release_failures_total",
            {"role": "unreachable-owner", "reason": "unavailable"},
        )
        assert failures == 1
        assert exporter.active_leases() == 1  # left to expiry
    finally:
        importer.close()
        exporter.close()
