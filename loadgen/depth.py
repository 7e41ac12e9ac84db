"""Samples the fleet's queue depth per model node from Redis while a load test runs.

Reads the ``dfleet:depth`` hash through :class:`services.common.fleet_state.FleetState`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class DepthSample:
    t: float  # seconds from the start of the run
    depths: dict[str, int]


async def sample_depths(redis_url: str, interval_s: float, started: float,
                        stop: asyncio.Event) -> list[DepthSample]:
    """Polls until ``stop`` is set; a Redis error ends the sampling, not the run."""
    from services.common.fleet_state import FleetState

    state = FleetState.from_url(redis_url)
    samples: list[DepthSample] = []
    try:
        while not stop.is_set():
            depths = await asyncio.to_thread(state.depths)
            samples.append(DepthSample(time.monotonic() - started, depths))
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass
    except Exception as error:  # noqa: BLE001 - a broken Redis loses the depth plot, not the run
        import sys

        print(f"[loadgen] queue depth sampling stopped: {error}", file=sys.stderr)
    finally:
        state.redis.close()
    return samples
