"""Transport payloads in one process: every wire dtype round-trips inline and through shared
memory (0-d, empty and non-contiguous tensors included), the exporter picks the payload kind
from the peer and thresholds, and malformed or stale refs raise TransportError."""

from __future__ import annotations

import time

import pytest
import torch

from diffusion.v1 import tensor_pb2
from services.common.transport import (
    TensorExporter,
    TensorImporter,
    TransportError,
    host_id,
    local_peer,
)
from services.common.transport.codec import wire_dtype

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


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen, dtype=torch.float64) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=gen, dtype=torch.int64).to(dtype)


def _cases(dtype: torch.dtype) -> list[torch.Tensor]:
    return [
        _sample(dtype, (3, 5, 7)),
        _sample(dtype, ()),
        _sample(dtype, (0, 4)),
        _sample(dtype, (6, 9)).t(),  # non-contiguous
        _sample(dtype, (4, 10, 3))[:, ::3, 1],  # strided slice
    ]


@pytest.fixture
def pair():
    exporter = TensorExporter("", role="test")
    importer = TensorImporter()
    yield exporter, importer
    importer.close()
    exporter.close()


def test_every_dtype_is_on_the_wire() -> None:
    assert sorted(wire_dtype(d) for d in DTYPES) == sorted(
        v for v in tensor_pb2.DType.values() if v != tensor_pb2.DTYPE_UNSPECIFIED
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["inline", "host_shm"])
def test_round_trip(pair, dtype: torch.dtype, kind: str) -> None:
    exporter, importer = pair
    peer = None if kind == "inline" else local_peer(inline_max_bytes=1)
    for tensor in _cases(dtype):
        ref = exporter.export(tensor, peer)
        expected_kind = kind if tensor.numel() else "inline"
        assert ref.WhichOneof("payload") == expected_kind
        out = importer.load(ref, release=False)
        assert out.dtype == dtype and out.shape == tensor.shape and out.is_contiguous()
        assert torch.equal(out, tensor)
        exporter.release([ref.lease.lease_id] if ref.lease.lease_id else [])
    assert exporter.active_leases() == 0


def test_loaded_tensor_is_a_copy(pair) -> None:
    exporter, importer = pair
    tensor = torch.arange(100_000, dtype=torch.float32)
    ref = exporter.export(tensor, local_peer())
    out = importer.load(ref, release=False)
    tensor += 1  # the exporter copied at export time
    exporter.release([ref.lease.lease_id])
    again = exporter.export(torch.zeros(100_000), local_peer())
    assert again.host_shm.segment == ref.host_shm.segment  # reused, overwritten
    assert torch.equal(out, torch.arange(100_000, dtype=torch.float32))


def test_payload_kind_follows_peer_and_thresholds() -> None:
    exporter = TensorExporter("", inline_max_bytes=1000)
    small, big = torch.zeros(250), torch.zeros(251)  # 1000 and 1004 bytes
    try:
        assert exporter.export(big).WhichOneof("payload") == "inline"
        other_host = tensor_pb2.PeerInfo(host_id="elsewhere")
        assert exporter.export(big, other_host).WhichOneof("payload") == "inline"
        assert exporter.export(small, local_peer()).WhichOneof("payload") == "inline"
        assert exporter.export(big, local_peer()).WhichOneof("payload") == "host_shm"
        assert (
            exporter.export(big, local_peer(inline_max_bytes=5000)).WhichOneof("payload")
            == "inline"
        )
        one_byte = torch.tensor(True)
        assert (
            exporter.export(one_byte, local_peer(inline_max_bytes=1)).WhichOneof("payload")
            == "host_shm"
        )
        assert local_peer().host_id == host_id()
    finally:
        exporter.close()


def _ref(**fields) -> tensor_pb2.TensorRef:
    return tensor_pb2.TensorRef(**fields)


@pytest.mark.parametrize(
    "ref, message",
    [
        (_ref(dtype=tensor_pb2.DTYPE_UNSPECIFIED, shape=[2], inline=b"\0" * 8), "unknown dtype"),
        (_ref(dtype=99, shape=[2], inline=b"\0" * 8), "unknown dtype"),
        (_ref(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[3], inline=b"\0" * 8), "needs 12"),
        (_ref(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1], inline=b"\0" * 8), "needs 4"),
        (_ref(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[-1], inline=b""), "negative"),
        (_ref(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[2]), "without payload"),
        (
            _ref(
                dtype=tensor_pb2.DTYPE_FLOAT32,
                shape=[2],
                host_shm=tensor_pb2.HostShm(segment="dfleet-nope-1-x-1", nbytes=8),
            ),
            "unknown shared-memory segment",
        ),
        (
            _ref(
                dtype=tensor_pb2.DTYPE_FLOAT32,
                shape=[2],
                host_shm=tensor_pb2.HostShm(segment="someone-elses", nbytes=8),
            ),
            "not a transport segment",
        ),
    ],
)
def test_bad_refs_raise(ref: tensor_pb2.TensorRef, message: str) -> None:
    importer = TensorImporter()
    try:
        with pytest.raises(TransportError, match=message):
            importer.load(ref)
    finally:
        importer.close()


def test_shm_ref_outside_its_segment_or_short_raises(pair) -> None:
    exporter, importer = pair
    ref = exporter.export(torch.zeros(1024), local_peer(inline_max_bytes=1))
    short = tensor_pb2.TensorRef()
    short.CopyFrom(ref)
    short.host_shm.nbytes = 4000
    with pytest.raises(TransportError, match="needs 4096"):
        importer.load(short, release=False)
    shifted = tensor_pb2.TensorRef()
    shifted.CopyFrom(ref)
    shifted.host_shm.offset = 1 << 20
    with pytest.raises(TransportError, match="outside segment"):
        importer.load(shifted, release=False)


def test_expired_or_closed_refs_raise(pair) -> None:
    exporter, importer = pair
    expired = exporter.export(torch.ones(100_000), local_peer(), ttl_s=0)
    with pytest.raises(TransportError, match="expired"):
        importer.load(expired)
    gone = exporter.export(torch.ones(100_000), local_peer())
    exporter.close()
    with pytest.raises(TransportError, match="unknown shared-memory segment"):
        importer.load(gone, release=False)


def test_lease_fields(pair) -> None:
    exporter, _ = pair
    exporter.owner_address = "127.0.0.1:5555"
    before = time.time()
    ref = exporter.export(torch.ones(100_000), local_peer(), ttl_s=30)
    assert ref.lease.owner == "127.0.0.1:5555" and ref.lease.lease_id
    assert before * 1000 + 29_000 < ref.lease.expires_unix_ms <= (time.time() + 30) * 1000
    assert not exporter.export(torch.ones(100_000)).HasField("lease")
