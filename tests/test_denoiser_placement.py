"""Unit: the gateway places denoiser work by the cost model, counting the requests it has
itself placed and not yet finished, so a burst between two heartbeats spreads out."""

from __future__ import annotations

from services.common.fleet_state import ReplicaInfo
from services.common.transport import host_id
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
