"""A replica SIGKILLed mid-request: the request is re-placed and completes with the same image.

Live fleet, real processes. A ControlNet request is run once undisturbed for its reference
image. Then a second replica of the role is started, the same request is sent, and at its
third step the replica it runs on (the one holding the model: the cost model prefers it) is
SIGKILLed. The request must end with an image equal to the reference (max |difference|
<= 1e-5 on the float image), its metadata naming the role re-placed; with no replica of the
role left, a request ends UNAVAILABLE naming the role.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from dfleet.local_fleet import LocalFleet, ServiceProcess
from tests.diffusers_reference import sample_image

WAIT_S = 180.0
PARAMS: dict[str, Any] = dict(steps=30, seed=7, return_pixels=True,
                              controlnets=[dfleet.ControlNet("tiny-cn-a",
                                                             image=sample_image(3))])


@pytest.fixture(scope="module")
def failover_fleet(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[LocalFleet]:
    local = LocalFleet(str(tiny_models), state_dir=str(tmp_path_factory.mktemp("failover")),
                       replicas={"lora_cache": 0},
                       env={"DFLEET_INLINE_MAX_BYTES": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    with local:
        yield local


@pytest.fixture(scope="module")
def reference(failover_fleet: LocalFleet) -> np.ndarray:
    with dfleet.Client(failover_fleet.gateway_address, timeout=WAIT_S) as client:
        result = client.generate("a lighthouse", **PARAMS)
    assert result.pixels is not None
    return result.pixels


def _second(fleet: LocalFleet, role: str) -> ServiceProcess:
    service = fleet.spawn(role)
    fleet._wait_port(service)
    return service


def _kill_at_step(fleet: LocalFleet, victim: ServiceProcess, step: int) -> dfleet.Result:
    killed = threading.Event()
    with dfleet.Client(fleet.gateway_address, timeout=WAIT_S) as client:
        for event in client.stream("a lighthouse", **PARAMS):
            if isinstance(event, dfleet.Progress) and event.step >= step and not killed.is_set():
                victim.process.send_signal(signal.SIGKILL)
                killed.set()
            if isinstance(event, dfleet.Result):
                assert killed.is_set(), "the request ended before the kill"
                return event
    raise AssertionError("no result")


@pytest.mark.parametrize("role", ["denoiser", "controlnet"])
def test_a_replica_killed_mid_request_is_replaced(failover_fleet: LocalFleet,
                                                  reference: np.ndarray, role: str) -> None:
    fleet = failover_fleet
    victim = next(s for s in fleet.services if s.role == role and s.index == 0)
    _second(fleet, role)
    result = _kill_at_step(fleet, victim, 3)
    assert result.pixels is not None
    assert float(np.abs(result.pixels - reference).max()) <= 1e-5
    assert result.metadata.get("re_placed") == role, result.metadata


@pytest.mark.slow  # waits out the replica wait
def test_no_replica_left_ends_unavailable_naming_the_role(tiny_models: Path,
                                                         tmp_path: Path) -> None:
    local = LocalFleet(str(tiny_models), state_dir=str(tmp_path), restart_crashed=False,
                       replicas={"lora_cache": 0},
                       env={"DFLEET_REPLICA_WAIT_S": "3", "OMP_WAIT_POLICY": "PASSIVE"})
    with local:
        victim = next(s for s in local.services if s.role == "controlnet")
        with pytest.raises(dfleet.Unavailable) as caught:
            _kill_at_step(local, victim, 3)
    assert "controlnet" in caught.value.message
