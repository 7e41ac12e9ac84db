"""The scheduler's estimate of when a request would finish on a denoiser replica.

Per candidate: queue wait and run time (the replica's measured step time,
stretched by the requests already sharing its step batch) plus what must be
loaded first (the model, LoRAs not resident) plus moving tensors to another
host. The gateway places a request where the estimate is lowest, and refuses
it (admission control) when even that estimate misses its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.fleet_state import ReplicaInfo


@dataclass(frozen=True)
class CostSettings:
    """Defaults used until replicas report measurements of their own."""

    default_step_ms: float = 50.0
    """Step time of a replica that has not reported one yet."""
    batch_marginal: float = 0.6
    """Extra step time per request already in the batch, as a fraction of one step."""
    model_load_ms: float = 3000.0
    """Loading a model that the replica does not hold."""
    lora_load_ms: float = 500.0
    """Fetching and parsing a LoRA that the replica does not hold."""
    remote_bytes_per_ms: float = 100_000.0
    """Throughput between hosts, for tensors that cannot go by shared memory."""


@dataclass(frozen=True)
class Estimate:
    replica: ReplicaInfo
    wait_and_run_ms: float
    load_ms: float
    transfer_ms: float

    @property
    def total_ms(self) -> float:
        return self.wait_and_run_ms + self.load_ms + self.transfer_ms


def step_ms(replica: ReplicaInfo, settings: CostSettings) -> float:
    try:
        measured = float(replica.extra.get("step_ms", "0"))
    except ValueError:
        measured = 0.0
    return measured if measured > 0 else settings.default_step_ms


def max_active(replica: ReplicaInfo) -> int:
    """How many requests the replica steps at once (0 = all it has)."""
    try:
        return max(0, int(replica.extra.get("max_active_requests", "0")))
    except ValueError:
        return 0


def estimate(replica: ReplicaInfo, *, model: str, steps: int, loras: list[str],
             gateway_host: str, payload_bytes: int, settings: CostSettings) -> Estimate:
    """A replica that steps at most ``max_active_requests`` at once serves the rest first
    come first served: the request waits for the waves ahead of it, then shares a batch."""
    limit = max_active(replica)
    if limit:
        waves = replica.load // limit + 1
        sharing = min(replica.load, limit - 1)
    else:
        waves, sharing = 1, replica.load
    per_step = step_ms(replica, settings) * (1.0 + settings.batch_marginal * sharing)
    load = 0.0 if model in replica.models else settings.model_load_ms
    load += settings.lora_load_ms * sum(1 for name in loras if name not in replica.loras)
    transfer = 0.0
    if gateway_host and replica.host_id != gateway_host:
        transfer = payload_bytes / settings.remote_bytes_per_ms
    return Estimate(replica, per_step * steps * waves, load, transfer)
