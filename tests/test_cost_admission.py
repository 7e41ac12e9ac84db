"""Admission by cost: the per-request compute budget and a step-time estimate that one
outlier does not poison (unit, pure), and through a live fleet: an over-budget request is
refused RESOURCE_EXHAUSTED saying why while a small one is served."""

from __future__ import annotations

from typing import Any

import pytest

import dfleet
from services.common.errors import ResourceExhausted
from services.common.fleet_state import ReplicaInfo
from services.gateway.cost_model import CostSettings, StepTimes, check_budget, estimate


def _finished(replica: str, width: int, run_ms: float, steps: int = 10,
              batch_peak: str = "1") -> dict[str, str]:
    return {"denoiser": replica, "width": str(width), "height": str(width),
            "steps": str(steps), "num_images": "1", "denoise_run_ms": str(run_ms),
            "denoise_batch_peak": batch_peak}


def test_one_outlier_does_not_poison_the_step_time() -> None:
    learned = StepTimes()
    for _ in range(4):
        learned.observe(_finished("d0", 512, run_ms=10 * 10 * 0.262144))  # 10 ms per MP-step
    learned.observe(_finished("d0", 512, run_ms=1e7))                       # a stalled run
    assert learned.ms_per_megapixel("d0") == pytest.approx(10.0)


def test_requests_sharing_a_batch_teach_nothing() -> None:
    learned = StepTimes()
    learned.observe(_finished("d0", 512, run_ms=500.0, batch_peak="3"))
    learned.observe({"denoiser": "d0", "steps": "x"})
    assert learned.ms_per_megapixel("d0") is None


def test_estimate_scales_with_size_and_ignores_a_poisoned_heartbeat() -> None:
    # The heartbeat still reports the step time a 2048x2048 request left behind.
    replica = ReplicaInfo("d0", "denoiser", "a:1", "h", models=("m",),
                          extra={"step_ms": "158000"})
    learned = StepTimes()
    learned.observe(_finished("d0", 2048, run_ms=158000 * 20, steps=20))
    settings = CostSettings()

    def total(side: int) -> float:
        return estimate(replica, model="m", steps=20, loras=[], gateway_host="h",
                        payload_bytes=0, settings=settings, pixels=side * side,
                        learned=learned).total_ms
    assert total(64) == pytest.approx(total(2048) * (64 * 64) / (2048 * 2048))
    assert total(64) < 5000                    # seconds, not the 52 minutes of the heartbeat
    unlearned = estimate(replica, model="m", steps=20, loras=[], gateway_host="h",
                         payload_bytes=0, settings=settings, pixels=64 * 64)
    assert unlearned.total_ms == pytest.approx(158000 * 20)   # the heartbeat, until it learns


def test_compute_budget() -> None:
    settings = CostSettings(max_pixel_steps=1024 * 1024 * 50)
    check_budget(1024 * 1024 * 50, settings)
    with pytest.raises(ResourceExhausted) as caught:
        check_budget(2048 * 2048 * 20, settings)
    assert "compute budget" in caught.value.message and "83,886,080" in caught.value.message
    check_budget(10**12, CostSettings())        # 0: no budget


def test_over_budget_request_is_refused_and_a_small_one_served(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        with pytest.raises(dfleet.ResourceExhausted) as caught:
            client.generate("too big", width=2048, height=2048, steps=200)
        assert "compute budget" in caught.value.message
        assert client.generate("small", steps=2).png.startswith(b"\x89PNG")
