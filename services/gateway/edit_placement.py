"""Mask-aware placement of template edits: by predicted work, not by request count.

An edit's cost depends on its mask: a cached edit computes only the masked
region (plus a halo) and loads the template's cached activations; an exact
edit computes every token. :class:`EditCostModel` predicts the milliseconds
per step of an edit from its region ratio and the template's cache bytes
per step, a linear model fitted by least squares on measurements: a
profile written by ``bench/masked_editing.py``, then every edit that ran
alone in its batch (its run time over its steps).

:class:`EditLedger` keeps, in Redis, the predicted remaining milliseconds
of every edit in flight per denoiser replica (updated as progress events
arrive), so all gateways see the same outstanding work. :class:`EditPlacer`
sends an edit to the replica with the least outstanding work; round-robin
and least-requests are there to compare against.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.fleet_state import FleetState, ReplicaInfo

MASK_AWARE, ROUND_ROBIN, LEAST_REQUESTS = "mask_aware", "round_robin", "least_requests"
POLICIES = (MASK_AWARE, ROUND_ROBIN, LEAST_REQUESTS)
LEDGER_TTL_S = 600


@dataclass(frozen=True)
class EditDemand:
    """What the gateway knows of an edit before placing it."""

    ratio: float                 # region (mask plus halo) as a fraction of the latent tokens
    cached: bool                 # the template's activations are recorded
    steps: int
    cache_bytes_per_step: float  # template record bytes / steps (0 when not cached)


class EditCostModel:
    """``ms/step = a + b * ratio + c * MB/step`` for cached edits; ``d`` for exact ones."""

    def __init__(self, cached: tuple[float, float, float] = (20.0, 250.0, 0.0),
                 exact_ms: float = 250.0, window: int = 200) -> None:
        self.cached = np.asarray(cached, dtype=float)
        self.exact_ms = exact_ms
        self.window = window
        self._samples: list[tuple[float, float, float]] = []  # (ratio, MB/step, ms/step)
        self._exact: list[float] = []
        self._lock = threading.Lock()

    @classmethod
    def from_profile(cls, path: str | Path) -> EditCostModel:
        """A model fitted on a profile: ``{"cached": [[ratio, MB/step, ms/step], ...],
        "exact_ms": [ms/step, ...]}``."""
        data = json.loads(Path(path).read_text())
        model = cls()
        for ratio, mb, ms in data.get("cached", []):
            model.observe(EditDemand(ratio, True, 1, mb * 1e6), ms)
        for ms in data.get("exact_ms", []):
            model.observe(EditDemand(1.0, False, 1, 0.0), ms)
        return model

    def per_step_ms(self, demand: EditDemand) -> float:
        if not demand.cached:
            return self.exact_ms
        features = np.array([1.0, demand.ratio, demand.cache_bytes_per_step / 1e6])
        return float(max(features @ self.cached, 1e-3))

    def cost_ms(self, demand: EditDemand) -> float:
        return self.per_step_ms(demand) * demand.steps

    def observe(self, demand: EditDemand, per_step_ms: float) -> None:
        """A measured step time of an edit that ran alone; refits the model."""
        with self._lock:
            if not demand.cached:
                self._exact = (self._exact + [per_step_ms])[-self.window:]
                self.exact_ms = float(np.median(self._exact))
                return
            self._samples = (self._samples + [(demand.ratio, demand.cache_bytes_per_step / 1e6,
                                               per_step_ms)])[-self.window:]
            x = np.array([[1.0, r, mb] for r, mb, _ in self._samples])
            y = np.array([ms for _, _, ms in self._samples])
            ridge = 1e-6 * np.eye(3)
            self.cached = np.linalg.solve(x.T @ x + ridge, x.T @ y)


class EditLedger:
    """Predicted remaining work per denoiser replica, in Redis: ``{p}edit_work:{replica}``."""

    def __init__(self, fleet: FleetState) -> None:
        self.fleet = fleet

    def _key(self, replica_id: str) -> str:
        return self.fleet.key("edit_work", replica_id)

    def set(self, replica_id: str, request_id: str, remaining_ms: float) -> None:
        pipe = self.fleet.redis.pipeline()
        pipe.hset(self._key(replica_id), request_id, f"{max(remaining_ms, 0.0):.3f}")
        pipe.expire(self._key(replica_id), LEDGER_TTL_S)
        pipe.execute()

    def remove(self, replica_id: str, request_id: str) -> None:
        self.fleet.redis.hdel(self._key(replica_id), request_id)

    def outstanding(self, replicas: list[ReplicaInfo]) -> dict[str, tuple[float, int]]:
        """Per replica: (remaining ms, edits in flight)."""
        pipe = self.fleet.redis.pipeline()
        for r in replicas:
            pipe.hvals(self._key(r.replica_id))
        found = {}
        for r, values in zip(replicas, pipe.execute(), strict=True):
            found[r.replica_id] = (sum(float(v) for v in values), len(values))
        return found


class EditPlacer:
    def __init__(self, fleet: FleetState, costs: EditCostModel, policy: str = MASK_AWARE,
                 other_request_ms: float = 0.0, model_load_ms: float = 3000.0) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} is not one of {', '.join(POLICIES)}")
        self.ledger = EditLedger(fleet)
        self.costs = costs
        self.policy = policy
        self.other_request_ms = other_request_ms  # requests on a replica that are not edits
        self.model_load_ms = model_load_ms        # a replica that does not hold the model yet
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def reserve(self, replicas: list[ReplicaInfo], model: str, request_id: str,
                cost_ms: float) -> ReplicaInfo:
        """Chooses a replica and books the edit's work on it (atomically in this gateway)."""
        with self._lock:
            chosen = self.choose(replicas, model)
            self.ledger.set(chosen.replica_id, request_id, cost_ms)
        return chosen

    def choose(self, replicas: list[ReplicaInfo], model: str) -> ReplicaInfo:
        if not replicas:
            raise ValueError("no replicas to choose from")
        ordered = sorted(replicas, key=lambda r: (model not in r.models, r.replica_id))
        turn = next(self._turn)
        if self.policy == ROUND_ROBIN:
            return ordered[turn % len(ordered)]
        if self.policy == LEAST_REQUESTS:
            return min(ordered, key=lambda r: (r.load, (ordered.index(r) - turn) % len(ordered)))
        work = self.ledger.outstanding(ordered)

        def predicted(r: ReplicaInfo) -> tuple[float, int]:
            edits_ms, edits = work[r.replica_id]
            others = max(r.load - edits, 0) * self.other_request_ms
            loading = 0.0 if model in r.models else self.model_load_ms
            return edits_ms + others + loading, (ordered.index(r) - turn) % len(ordered)
        return min(ordered, key=predicted)
