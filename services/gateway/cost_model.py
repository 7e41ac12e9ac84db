"""The scheduler's estimate of when a request would finish on a denoiser replica.

Per candidate: queue wait and run time (the replica's measured step time,
stretched by the requests already sharing its step batch) plus what must be
loaded first (the model, LoRAs not resident) plus moving tensors to another
host. The gateway places a request where the estimate is lowest, and refuses
it (admission control) when even that estimate misses its deadline, or when
the request's size x steps exceed the per-request compute budget.

Step time grows with the image: a replica's heartbeat reports the step time
of whatever it ran last (an average that one 2048x2048 request can hold at
minutes for as long as nothing else runs), so the gateway keeps its own
figure per replica, from the requests it saw finish alone there: time per
megapixel-step, the median of the last few (one outlier moves a median by
one place, not to itself). The heartbeat's figure is used only until then.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.errors import ResourceExhausted
from services.common.fleet_state import ReplicaInfo

OBSERVATIONS_KEPT = 9


@dataclass(frozen=True)
class CostSettings:
    """Defaults used until replicas report measurements of their own."""

    default_step_ms: float = 50.0
    """Step time of a replica that has not reported one yet."""
    batch_marginal: float = 0.6
    """Extra step time per request already in the batch, as a fraction of one step, until the
    replica reports its own fit."""
    model_load_ms: float = 3000.0
    """Loading a model that the replica does not hold."""
    lora_load_ms: float = 500.0
    """Fetching and parsing a LoRA that the replica does not hold."""
    remote_bytes_per_ms: float = 100_000.0
    """Throughput between hosts, for tensors that cannot go by shared memory."""
    max_pixel_steps: int = 0
    """Per-request compute budget: width x height x steps x images; 0 = none."""


class StepTimes:
    """Per replica, the median time of one step per megapixel of the requests this gateway
    saw finish alone there. Thread-safe."""

    def __init__(self, kept: int = OBSERVATIONS_KEPT) -> None:
        self.kept = kept
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def observe(self, metadata: Mapping[str, str]) -> None:
        """Learns from a finished request's metadata (denoiser, steps, size, run time);
        requests that shared their batch say nothing about one request's step."""
        try:
            if metadata.get("denoise_batch_peak") != "1":
                return
            steps = int(metadata["steps"])
            megapixels = (int(metadata["width"]) * int(metadata["height"])
                          * int(metadata.get("num_images", "1")) / 1e6)
            run_ms = float(metadata["denoise_run_ms"])
            replica = metadata["denoiser"]
        except (KeyError, ValueError):
            return
        if steps <= 0 or megapixels <= 0 or run_ms <= 0:
            return
        with self._lock:
            seen = self._seen.setdefault(replica, deque(maxlen=self.kept))
            seen.append(run_ms / steps / megapixels)

    def ms_per_megapixel(self, replica_id: str) -> float | None:
        with self._lock:
            seen = self._seen.get(replica_id)
            return statistics.median(seen) if seen else None


def check_budget(pixel_steps: int, settings: CostSettings) -> None:
    """RESOURCE_EXHAUSTED for a request bigger than the per-request compute budget."""
    if settings.max_pixel_steps and pixel_steps > settings.max_pixel_steps:
        raise ResourceExhausted(
            f"the request needs width x height x steps x images = {pixel_steps:,}, over the "
            f"per-request compute budget of {settings.max_pixel_steps:,} "
            "(DFLEET_MAX_PIXEL_STEPS); ask for fewer pixels or steps")


@dataclass(frozen=True)
class Estimate:
    replica: ReplicaInfo
    wait_and_run_ms: float
    load_ms: float
    transfer_ms: float

    @property
    def total_ms(self) -> float:
        return self.wait_and_run_ms + self.load_ms + self.transfer_ms


def step_ms(replica: ReplicaInfo, settings: CostSettings, pixels: int = 0,
            learned: StepTimes | None = None) -> float:
    """One step of a request of ``pixels`` alone on ``replica``: this gateway's own median
    (scaled to the size) when it has one, else the replica's reported figure."""
    per_megapixel = learned.ms_per_megapixel(replica.replica_id) if learned else None
    if per_megapixel is not None and pixels > 0:
        return per_megapixel * pixels / 1e6
    try:
        measured = float(replica.extra.get("step_ms", "0"))
    except ValueError:
        measured = 0.0
    return measured if measured > 0 else settings.default_step_ms


def batch_marginal(replica: ReplicaInfo, settings: CostSettings) -> float:
    """The replica's fitted extra step time per request sharing its batch, once it reports
    one; the default until then."""
    try:
        return float(replica.extra["batch_marginal"])
    except (KeyError, ValueError):
        return settings.batch_marginal


def max_active(replica: ReplicaInfo) -> int:
    """How many requests the replica steps at once (0 = all it has)."""
    try:
        return max(0, int(replica.extra.get("max_active_requests", "0")))
    except ValueError:
        return 0


def estimate(replica: ReplicaInfo, *, model: str, steps: int, loras: list[str],
             gateway_host: str, payload_bytes: int, settings: CostSettings,
             pixels: int = 0, learned: StepTimes | None = None) -> Estimate:
    """A replica that steps at most ``max_active_requests`` at once serves the rest first
    come first served: the request waits for the waves ahead of it, then shares a batch."""
    limit = max_active(replica)
    if limit:
        waves = replica.load // limit + 1
        sharing = min(replica.load, limit - 1)
    else:
        waves, sharing = 1, replica.load
    per_step = step_ms(replica, settings, pixels, learned) * (
        1.0 + batch_marginal(replica, settings) * sharing)
    load = 0.0 if model in replica.models else settings.model_load_ms
    load += settings.lora_load_ms * sum(1 for name in loras if name not in replica.loras)
    transfer = 0.0
    if gateway_host and replica.host_id != gateway_host:
        transfer = payload_bytes / settings.remote_bytes_per_ms
    return Estimate(replica, per_step * steps * waves, load, transfer)
