"""CUDA IPC transport (needs a GPU): every dtype through the exporter's device pool, read in
the same process and from another process that opens the pool's IPC handle once; ranges
return to the pool on release; a peer without that GPU or a full pool falls back to shared
memory and the fallback is counted."""

from __future__ import annotations

import multiprocessing as mp
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
    gpu_uuid,
    local_peer,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.bool,
]


def _cases(dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    base = torch.randint(0, 100, (6, 9), generator=gen)
    tensors = [base, base[2, 3], base.t(), base[:, ::2]]
    return [t.to(dtype).to("cuda") for t in tensors]


def _peer() -> tensor_pb2.PeerInfo:
    return local_peer(gpu_uuid=gpu_uuid(torch.device("cuda", 0)), inline_max_bytes=1)


def _fallbacks(reason: str) -> float:
    name = "dfleet_transport_fallbacks_total"
    return REGISTRY.get_sample_value(name, {"role": "cuda-test", "reason": reason}) or 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_in_process(dtype: torch.dtype) -> None:
    exporter = TensorExporter("", role="cuda-test")
    importer = TensorImporter()
    try:
        for tensor in _cases(dtype):
            ref = exporter.export(tensor, _peer())
            assert ref.WhichOneof("payload") == "cuda_ipc"
            on_gpu = importer.load(ref, device="cuda:0", release=False)
            on_cpu = importer.load(ref, device="cpu", release=False)
            exporter.release([ref.lease.lease_id])
            assert on_gpu.is_cuda and torch.equal(on_gpu, tensor)
            assert torch.equal(on_cpu, tensor.cpu())
        assert exporter.active_leases() == 0
    finally:
        importer.close()
        exporter.close()


def test_released_ranges_are_reused() -> None:
    exporter = TensorExporter("", role="cuda-test", cuda_pool_bytes=1 << 20)
    try:
        tensor = torch.ones(200_000, device="cuda")  # 800 KB: one at a time fits
        first = exporter.export(tensor, _peer())
        assert first.WhichOneof("payload") == "cuda_ipc"
        before = _fallbacks("cuda_pool_full")
        second = exporter.export(tensor, _peer())
        assert second.WhichOneof("payload") == "host_shm"
        assert _fallbacks("cuda_pool_full") == before + 1
        exporter.release([first.lease.lease_id, second.lease.lease_id])
        third = exporter.export(tensor, _peer())
        assert third.cuda_ipc.offset == first.cuda_ipc.offset
    finally:
        exporter.close()


def test_peer_without_the_gpu_gets_shared_memory() -> None:
    exporter = TensorExporter("", role="cuda-test")
    importer = TensorImporter()
    try:
        tensor = torch.arange(100_000, device="cuda")
        before = _fallbacks("peer_without_gpu")
        ref = exporter.export(tensor, local_peer(inline_max_bytes=1))
        assert ref.WhichOneof("payload") == "host_shm"
        assert _fallbacks("peer_without_gpu") == before + 1
        other = local_peer(gpu_uuid="GPU-00000000-0000-0000-0000-000000000000")
        assert exporter.export(tensor, other).WhichOneof("payload") == "host_shm"
        assert torch.equal(importer.load(ref), tensor.cpu())
    finally:
        importer.close()
        exporter.close()


def _producer(conn: Connection, peer: bytes) -> None:
    exporter = TensorExporter("", role="cuda-test")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_tensor_leases(server, exporter)
    exporter.owner_address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    info = tensor_pb2.PeerInfo.FromString(peer)
    for i in range(50):
        tensor = torch.full((256, 1024), float(i), device="cuda", dtype=torch.float16)
        conn.send(exporter.export(tensor, info).SerializeToString())
    conn.recv()  # the consumer has released everything
    conn.send(exporter.active_leases())
    exporter.close()
    server.stop(grace=None)


def test_another_process_reads_the_pool() -> None:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_producer, args=(child, _peer().SerializeToString()))
    process.start()
    importer = TensorImporter()
    try:
        for i in range(50):
            ref = tensor_pb2.TensorRef.FromString(parent.recv())
            assert ref.WhichOneof("payload") == "cuda_ipc"
            out = importer.load(ref, device="cuda:0")
            assert torch.equal(out, torch.full_like(out, float(i)))
        assert importer.flush()
        parent.send("done")
        assert parent.recv() == 0
    finally:
        importer.close()
        process.join(60)
    assert process.exitcode == 0
