"""Picks a replica per role for a request, from the replicas' heartbeats.

The denoiser is chosen by the cost model (earliest estimated finish); the
other roles prefer replicas that already hold the model, then the least
loaded, then the one on the denoiser's host (so tensors move by shared
memory); a round-robin counter breaks ties.

Heartbeats report a replica's load every few seconds; a burst placed in
between would all see the same stale figure and land on one replica. So the
placer also counts the requests it has itself sent to each denoiser and still
awaits, and takes the larger of the two.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace

from diffusion.v1 import tensor_pb2
from services.common.errors import Unavailable
from services.common.fleet_state import FleetState, ReplicaInfo
from services.common.transport import host_id
from services.gateway.cost_model import CostSettings, Estimate, StepTimes, estimate

WAIT_POLL_S = 0.2


@dataclass(frozen=True)
class Placement:
    """The replicas every request uses; its attachments place what they need themselves."""

    text_encoder: ReplicaInfo
    denoiser: ReplicaInfo
    vae: ReplicaInfo

    def replicas(self) -> list[ReplicaInfo]:
        return [self.text_encoder, self.denoiser, self.vae]


def peer_of(replica: ReplicaInfo, inline_max_bytes: int = 0) -> tensor_pb2.PeerInfo:
    return tensor_pb2.PeerInfo(host_id=replica.host_id, inline_max_bytes=inline_max_bytes)


class Placer:
    def __init__(self, fleet: FleetState, costs: CostSettings | None = None) -> None:
        self.fleet = fleet
        self.costs = costs or CostSettings()
        self.step_times = StepTimes()   # this gateway's own step-time figures per replica
        self._tie = itertools.count()
        self._lock = threading.Lock()
        self._assigned: Counter[str] = Counter()

    def assign(self, replica_id: str) -> None:
        """A request of this gateway now runs on (or waits for) ``replica_id``."""
        with self._lock:
            self._assigned[replica_id] += 1

    def unassign(self, replica_id: str) -> None:
        with self._lock:
            self._assigned[replica_id] -= 1
            if self._assigned[replica_id] <= 0:
                del self._assigned[replica_id]

    def _with_own_load(self, replicas: list[ReplicaInfo]) -> list[ReplicaInfo]:
        with self._lock:
            return [replace(r, load=max(r.load, self._assigned.get(r.replica_id, 0)))
                    for r in replicas]

    def _live(self, role: str, wait_s: float) -> list[ReplicaInfo]:
        """Live replicas of ``role``; waits up to ``wait_s`` for one to come up."""
        deadline = time.monotonic() + wait_s
        while True:
            replicas = self.fleet.replicas(role)
            if replicas:
                return replicas
            if time.monotonic() >= deadline:
                raise Unavailable(f"no {role} replica is alive (waited {wait_s:.0f} s)")
            time.sleep(WAIT_POLL_S)

    def pick(self, role: str, model: str, host: str = "",
             avoid: frozenset[str] = frozenset(), wait_s: float = 0.0) -> ReplicaInfo:
        """A live replica of ``role``: one holding ``model``, least loaded, on ``host``,
        not in ``avoid``, in that order of preference."""
        replicas = self._live(role, wait_s)
        turn = next(self._tie)

        def cost(r: ReplicaInfo) -> tuple[int, int, int, int, int]:
            order = (hash(r.replica_id) + turn) % 1_000_003
            return (r.replica_id in avoid, model not in r.models and bool(model), r.load,
                    bool(host) and r.host_id != host, order)
        return min(replicas, key=cost)

    def best_denoiser(self, model: str, steps: int, loras: list[str], payload_bytes: int,
                      wait_s: float = 0.0, pixels: int = 0) -> Estimate:
        """The denoiser replica with the earliest estimated finish (the scheduler's choice);
        ``pixels``: width x height x images, which step time grows with."""
        replicas = self._with_own_load(self._live("denoiser", wait_s))
        turn = next(self._tie)
        estimates = [estimate(r, model=model, steps=steps, loras=loras, gateway_host=host_id(),
                              payload_bytes=payload_bytes, settings=self.costs, pixels=pixels,
                              learned=self.step_times)
                     for r in replicas]
        return min(estimates, key=lambda e: (round(e.total_ms, 3),
                                             (hash(e.replica.replica_id) + turn) % 1_000_003))

    def cfg_partner(self, model: str, denoiser: ReplicaInfo) -> ReplicaInfo | None:
        """A second denoiser for CFG parallelism, or None when only ``denoiser`` is alive."""
        others = [r for r in self.fleet.replicas("denoiser") if r.replica_id != denoiser.replica_id]
        if not others:
            return None
        return self.pick("denoiser", model, denoiser.host_id, frozenset({denoiser.replica_id}))

    def place(self, model: str, denoiser: ReplicaInfo, wait_s: float = 0.0) -> Placement:
        """The text encoder and VAE of a request, near its denoiser; a role with none alive
        is waited for up to ``wait_s``."""
        host = denoiser.host_id
        return Placement(text_encoder=self.pick("text_encoder", model, host, wait_s=wait_s),
                         denoiser=denoiser, vae=self.pick("vae", model, host, wait_s=wait_s))
