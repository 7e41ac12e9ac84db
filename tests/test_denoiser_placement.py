"""Unit: the gateway places denoiser work by the cost model, counting the requests it has
itself placed and not yet finished, so a burst between two heartbeats spreads out; the
model prices a replica's queue by its reported step time and active-request limit."""

from __future__ import annotations

import pytest

from services.common.fleet_state import ReplicaInfo
from services.common.transport import host_id
from services.gateway.cost_model import CostSettings, estimate
from services.gateway.placement import Placer


class Fleet:
    """Two live denoisers whose heartbeats both say load 0."""

    def __init__(self) -> None:
        self.list = [ReplicaInfo(replica_id=f"d{i}", role="denoiser", address=f"a{i}",
                                 host_id=host_id(), models=("m",), extra={"step_ms": "40"})
                     for i in range(2)]

    def replicas(self, role: str) -> list[ReplicaInfo]:
        return list(self.list) if role == "denoiser" else []


def test_a_burst_between_heartbeats_alternates_replicas() -> None:
    placer = Placer(Fleet())  # type: ignore[arg-type]
    chosen = []
    for _ in range(6):
        best = placer.best_denoiser("m", 10, [], 0).replica.replica_id
        placer.assign(best)
        chosen.append(best)
    assert chosen.count("d0") == chosen.count("d1") == 3


def test_finished_requests_stop_counting() -> None:
    placer = Placer(Fleet())  # type: ignore[arg-type]
    for _ in range(3):
        placer.assign("d0")
    assert placer.best_denoiser("m", 10, [], 0).replica.replica_id == "d1"
    for _ in range(3):
        placer.unassign("d0")
    placer.assign("d1")
    assert placer.best_denoiser("m", 10, [], 0).replica.replica_id == "d0"


def test_the_heartbeat_load_counts_when_it_is_larger() -> None:
    fleet = Fleet()
    fleet.list[0] = ReplicaInfo(**{**fleet.list[0].__dict__, "load": 5})
    placer = Placer(fleet)  # type: ignore[arg-type]
    placer.assign("d1")
    assert placer.best_denoiser("m", 10, [], 0).replica.replica_id == "d1"


def _replica(load: int, **extra: str) -> ReplicaInfo:
    return ReplicaInfo(replica_id="d", role="denoiser", address="a", host_id=host_id(),
                       models=("m",), load=load, extra={"step_ms": "40", **extra})


def test_the_estimate_uses_the_reported_step_time() -> None:
    costs = CostSettings()
    alone = estimate(_replica(0), model="m", steps=10, loras=[], gateway_host=host_id(),
                     payload_bytes=0, settings=costs)
    assert alone.wait_and_run_ms == 400.0
    assert alone.load_ms == 0.0


def test_one_active_request_prices_the_queue_first_come_first_served() -> None:
    costs = CostSettings()

    def wait_and_run(load: int, limit: str) -> float:
        return estimate(_replica(load, max_active_requests=limit), model="m", steps=10,
                        loras=[], gateway_host=host_id(), payload_bytes=0,
                        settings=costs).wait_and_run_ms

    assert wait_and_run(3, "1") == 4 * 400.0          # three whole requests ahead
    assert wait_and_run(3, "2") == 2 * 400.0 * (1 + costs.batch_marginal)
    assert wait_and_run(3, "0") == 400.0 * (1 + 3 * costs.batch_marginal)  # batch sharing


def test_a_replicas_fitted_batch_marginal_replaces_the_default() -> None:
    costs = CostSettings()
    shared = _replica(2, batch_marginal="0.25")
    default = _replica(2)
    one = estimate(shared, model="m", steps=10, loras=[], gateway_host=host_id(),
                   payload_bytes=0, settings=costs)
    other = estimate(default, model="m", steps=10, loras=[], gateway_host=host_id(),
                     payload_bytes=0, settings=costs)
    assert one.wait_and_run_ms == pytest.approx(40 * 10 * (1 + 0.25 * 2))
    assert other.wait_and_run_ms == pytest.approx(40 * 10 * (1 + costs.batch_marginal * 2))


def test_the_denoiser_fits_its_batch_marginal_from_measured_steps() -> None:
    from services.denoiser.engine import DenoiserEngine

    engine = DenoiserEngine(lambda name: None)  # type: ignore[arg-type,return-value]
    try:
        assert engine.batch_marginal() is None
        for works, ms in ((1, 100.0), (2, 160.0), (3, 220.0)):
            engine._observe_step(ms, works)
        assert engine.batch_marginal() == pytest.approx(0.6)
        assert engine.step_ms() == 100.0
    finally:
        engine.stop()


def test_progress_is_written_at_a_bounded_rate_and_always_at_the_end() -> None:
    from services.gateway.servicer import ProgressWrites

    writes = ProgressWrites(0.5)
    due = [writes.due(step, 20, now) for step, now in
           ((1, 0.0), (2, 0.1), (3, 0.2), (4, 0.6), (5, 0.7), (20, 0.75))]
    assert due == [True, False, False, True, False, True]
