"""Unit: the gateway places denoiser work by the cost model, counting the requests it has
itself placed and not yet finished, so a burst between two heartbeats spreads out; the
model prices a replica's queue by its reported step time and active-request limit."""

from __future__ import annotations

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
