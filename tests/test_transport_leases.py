"""Lease lifecycle in one process: release returns the segment to the pool (the next export
reuses it), unknown ids are a counted no-op, a request's leases end with it, expiry reclaims,
idle segments beyond the budget are unlinked, concurrent exports and releases from several
threads keep every value and lease straight, close() unlinks everything, the CUDA pool's
range allocator reuses and coalesces ranges, and metrics register once for many exporters."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from prometheus_client import REGISTRY

from services.common.transport import TensorExporter, TensorImporter, local_peer
from services.common.transport.ranges import RangeAllocator
from services.common.transport.shm import SHM_DIR
from services.common.transport.shm_pool import size_class

PEER = local_peer(inline_max_bytes=1)


def _segments(exporter: TensorExporter) -> list[str]:
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(exporter.segment_prefix))


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def exporter():
    exporter = TensorExporter("", role="lease-test")
    yield exporter
    exporter.close()


def test_release_returns_the_segment_for_reuse(exporter) -> None:
    first = exporter.export(torch.zeros(1000), PEER)
    pinned = exporter.export(torch.zeros(1000), PEER)
    assert first.host_shm.segment != pinned.host_shm.segment
    assert exporter.release([first.lease.lease_id]) == 1
    reused = exporter.export(torch.ones(900), PEER)  # same size class
    assert reused.host_shm.segment == first.host_shm.segment
    assert exporter.active_leases() == 2
    assert len(_segments(exporter)) == 2


def test_unknown_and_repeated_releases_are_counted_no_ops(exporter) -> None:
    before = _metric("dfleet_transport_unknown_releases_total", role="lease-test")
    ref = exporter.export(torch.zeros(1000), PEER)
    assert exporter.release([ref.lease.lease_id, "no-such-lease"]) == 1
    assert exporter.release([ref.lease.lease_id]) == 0
    assert _metric("dfleet_transport_unknown_releases_total", role="lease-test") == before + 2
    assert exporter.active_leases() == 0


def test_request_end_releases_its_leases_only(exporter) -> None:
    for _ in range(3):
        exporter.export(torch.zeros(1000), PEER, request_id="r1")
    other = exporter.export(torch.zeros(1000), PEER, request_id="r2")
    assert exporter.release_request("r1") == 3
    assert exporter.release_request("r1") == 0
    assert exporter.active_leases() == 1
    assert exporter.release([other.lease.lease_id]) == 1


def test_expired_leases_are_reclaimed(exporter) -> None:
    short = exporter.export(torch.zeros(1000), PEER, ttl_s=5)
    exporter.export(torch.zeros(1000), PEER, ttl_s=60)
    now = time.time()
    assert exporter.reclaim_expired(now) == 0
    assert exporter.reclaim_expired(now + 10) == 1
    assert exporter.active_leases() == 1
    assert exporter.release([short.lease.lease_id]) == 0  # already gone
    assert exporter.reclaim_expired(now + 120) == 1
    assert exporter.active_leases() == 0


def test_export_reclaims_expired_leases_on_its_own(exporter) -> None:
    exporter.export(torch.zeros(1000), PEER, ttl_s=0)
    exporter.export(torch.zeros(1000), PEER)
    assert exporter.active_leases() == 1


def test_idle_segments_beyond_budget_are_unlinked() -> None:
    exporter = TensorExporter("", shm_idle_budget_bytes=size_class(40_000))
    try:
        refs = [exporter.export(torch.zeros(10_000), PEER) for _ in range(3)]
        assert len(_segments(exporter)) == 3
        exporter.release(r.lease.lease_id for r in refs)
        assert _segments(exporter) == [refs[2].host_shm.segment]  # most recent kept
    finally:
        exporter.close()


def test_concurrent_exports_and_releases(exporter) -> None:
    importer = TensorImporter()
    errors: list[str] = []

    def worker(seed: int) -> None:
        for i in range(100):
            tensor = torch.full((5_000 + 1_000 * (i % 3),), float(seed * 1000 + i))
            ref = exporter.export(tensor, PEER, request_id=f"r{seed}")
            if not torch.equal(importer.load(ref, release=False), tensor):
                errors.append(f"thread {seed} transfer {i}")
            if i % 2:
                exporter.release([ref.lease.lease_id])
        exporter.release_request(f"r{seed}")

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    importer.close()
    assert errors == []
    assert exporter.active_leases() == 0
    assert _metric("dfleet_transport_active_leases", role="lease-test") == 0


def test_close_unlinks_pinned_and_idle_segments() -> None:
    exporter = TensorExporter("")
    importer = TensorImporter()
    kept = exporter.export(torch.zeros(10_000), PEER)
    released = exporter.export(torch.zeros(100), PEER)
    importer.load(kept, release=False)  # the importer's mapping must not keep the name alive
    exporter.release([released.lease.lease_id])
    assert len(_segments(exporter)) == 2
    exporter.close()
    exporter.close()
    assert _segments(exporter) == []
    assert exporter.active_leases() == 0
    with pytest.raises(RuntimeError):
        exporter.export(torch.zeros(10), PEER)
    importer.close()


def test_metrics_register_once_for_many_exporters() -> None:
    exporters = [TensorExporter("", role="metrics-test") for _ in range(3)]
    before = _metric("dfleet_transport_active_leases", role="metrics-test")
    refs = [e.export(torch.zeros(1000), PEER) for e in exporters]
    assert _metric("dfleet_transport_active_leases", role="metrics-test") == before + 3
    assert _metric("dfleet_transport_bytes_total", role="metrics-test", kind="host_shm") >= 12_000
    for e, ref in zip(exporters, refs, strict=True):
        e.release([ref.lease.lease_id])
        e.close()
    assert _metric("dfleet_transport_active_leases", role="metrics-test") == before


def test_range_allocator_reuses_and_coalesces() -> None:
    ranges = RangeAllocator(4096, alignment=512)
    a, b, c = ranges.alloc(100), ranges.alloc(600), ranges.alloc(512)
    assert (a, b, c) == (0, 512, 1536)
    assert ranges.alloc(4096) is None
    ranges.free(512, 600)
    assert ranges.alloc(1024) == 512  # first fit into the hole
    ranges.free(512, 1024)
    ranges.free(0, 100)
    ranges.free(1536, 512)
    assert ranges.used == 0
    assert ranges.alloc(4096) == 0  # all coalesced back into one range
    ranges.free(0, 4096)
    with pytest.raises(ValueError, match="freed twice"):
        ranges.free(0, 4096)
