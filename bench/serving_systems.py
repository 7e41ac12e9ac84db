"""The two systems of the serving benchmark: how each starts, and its latency alone."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.baseline_process import BaselineProcess
from loadgen.records import OK
from loadgen.runner import RunOptions, run_load
from loadgen.schedule import ScheduledRequest
from loadgen.workload import WorkloadSpec


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    redis_url: str  # "" when the system keeps no queue depth in Redis
    start_s: float  # seconds from launch to serving


@contextlib.contextmanager
def running(name: str, models: Path, cpus: int, fleet_env: dict[str, str],
            logs: Path, fleet_replicas: dict[str, int] | None = None,
            baseline_lora_cache: int = 0) -> Iterator[tuple[str, str]]:
    """Starts ``baseline`` or ``fleet``; yields (gateway address, Redis URL or "")."""
    logs.mkdir(parents=True, exist_ok=True)
    if name == "baseline":
        with BaselineProcess(models, workers=cpus, threads=1, log_path=logs / "baseline.log",
                             lora_cache=baseline_lora_cache) as server:
            yield server.address, ""
        return
    from dfleet.local_fleet import LocalFleet

    with LocalFleet(str(models), state_dir=str(logs / "fleet"), env=dict(fleet_env),
                    replicas=dict(fleet_replicas or {})) as fleet:
        yield fleet.gateway_address, fleet.redis_url


def solo_latencies(address: str, work: WorkloadSpec, repeats: int) -> dict[str, float]:
    """Median latency of each workflow with nothing else running (after one warm-up each)."""
    requests: list[ScheduledRequest] = []
    for workflow in work.mix:
        for i in range(repeats + 1):
            requests.append(ScheduledRequest(index=len(requests), at=0.0, workflow=workflow,
                                             seed=i, prompt="a lighthouse, photo",
                                             lora=work.loras[0], controlnet=work.controlnets[0],
                                             mask_ratio=0.25, slo_s=1e9))
    result = run_load(requests, work, RunOptions(address, concurrency=1, timeout_s=300,
                                                 progress=False))
    failed = [r for r in result.records if r.status != OK]
    if failed:
        raise RuntimeError(f"a request alone failed: {failed[0].status} {failed[0].error}")
    solo: dict[str, float] = {}
    for workflow in work.mix:
        mine = [r for r in result.records if r.workflow == workflow][1:]
        solo[workflow] = statistics.median(
            r.finish_s - r.send_s for r in mine  # type: ignore[operator]
        )
    return solo
