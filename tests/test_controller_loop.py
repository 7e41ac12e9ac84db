"""The controller loop with an in-memory source and scaler: ticks drive the scaler the way
the policy decides, an outage of Redis or of the scaler is logged, counted and retried
next tick without touching counts, counts never leave min/max, metrics carry depth,
desired and actual per node, decisions are logged as JSON with their reason, and the
background thread starts and stops."""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.request
from collections.abc import Iterable

import pytest

from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.scaler import Decision, ReplicaCount, ScalerUnavailable
from controller.settings import ControllerSettings, NodeSettings
from controller.sources import FleetSnapshot, SourceUnavailable


class FakeSource:
    def __init__(self) -> None:
        self.depths: dict[str, int] = {}
        self.down = False

    def read(self, roles: Iterable[str]) -> FleetSnapshot:
        if self.down:
            raise SourceUnavailable("redis: connection refused")
        return FleetSnapshot(depths=dict(self.depths),
                             live_replicas={"denoiser": [("tiny",)], "vae": [()]})


class FakeScaler:
    """Deployments in memory; ``ready`` lags ``spec`` by one tick like pods starting."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.spec = dict(counts)
        self.ready = dict(counts)
        self.down = False
        self.calls: list[Decision] = []

    def replicas(self, node: NodeSettings, namespace: str) -> ReplicaCount:
        if self.down:
            raise ScalerUnavailable("api: 503")
        count = ReplicaCount(self.spec[node.deployment], self.ready[node.deployment])
        self.ready[node.deployment] = self.spec[node.deployment]
        return count

    def scale(self, decision: Decision) -> None:
        if self.down:
            raise ScalerUnavailable("api: 503")
        self.calls.append(decision)
        self.spec[decision.node.deployment] = decision.desired


def settings() -> ControllerSettings:
    common = {"target_depth_per_replica": 4, "up_stabilization_s": 2,
              "down_stabilization_s": 5, "idle_to_zero_s": 5, "tolerance": 0.1}
    return ControllerSettings(nodes=(
        NodeSettings(name="den", role="denoiser", model="tiny", min_replicas=1, max_replicas=5,
                     **common),  # type: ignore[arg-type]
        NodeSettings(name="vae", role="vae", model="tiny", min_replicas=0, max_replicas=2,
                     queues=("vae:tiny", "vae:tiny-inpainting"), **common),  # type: ignore[arg-type]
    ), namespace="ns")


def make() -> tuple[Controller, FakeSource, FakeScaler]:
    source, scaler = FakeSource(), FakeScaler({"den": 1, "vae": 0})
    return Controller(settings(), source, scaler, ControllerMetrics()), source, scaler


def sample(c: Controller, name: str, **labels: str) -> float | None:
    return c.metrics.registry.get_sample_value(name, labels)


def test_ticks_drive_the_scaler_as_the_policy_decides() -> None:
    c, source, scaler = make()
    source.depths = {"denoiser:tiny": 20, "vae:tiny-inpainting": 3}
    for t in range(4):
        c.tick(now=float(t))
    assert scaler.spec == {"den": 5, "vae": 1}
    assert [(d.node.name, d.current, d.desired, d.reason) for d in scaler.calls] == [
        ("den", 1, 5, "scale_up"), ("vae", 0, 1, "activate")]
    assert all(d.namespace == "ns" for d in scaler.calls)
    source.depths = {}
    for t in range(4, 20):
        c.tick(now=float(t))
    assert scaler.spec == {"den": 1, "vae": 0}


def test_redis_outage_skips_ticks_counts_them_and_recovers() -> None:
    c, source, scaler = make()
    source.depths = {"denoiser:tiny": 20}
    c.tick(now=0.0)
    source.down = True
    assert [c.tick(now=float(t)) for t in range(1, 6)] == [[]] * 5
    assert scaler.calls == [] and sample(c, "dfleet_controller_source_errors_total") == 5
    source.down = False
    c.tick(now=6.0)
    assert scaler.spec["den"] == 5


def test_scaler_outage_is_retried_next_tick_and_counted_per_node() -> None:
    c, source, scaler = make()
    source.depths = {"denoiser:tiny": 8}
    for t in range(3):
        c.tick(now=float(t))
    assert scaler.spec["den"] == 2
    source.depths = {"denoiser:tiny": 20}
    scaler.down = True
    for t in range(3, 8):
        c.tick(now=float(t))
    assert sample(c, "dfleet_controller_scaler_errors_total", role="denoiser", model="tiny") == 5
    scaler.down = False
    c.tick(now=8.0)
    assert scaler.spec["den"] == 5


def test_counts_never_leave_min_max_whatever_the_depth() -> None:
    c, source, scaler = make()
    rng = random.Random(11)
    for t in range(300):
        source.depths = {"denoiser:tiny": rng.choice([0, 1, 3, 9, 30, 10_000]),
                         "vae:tiny": rng.choice([0, 0, 2, 50])}
        c.tick(now=float(t))
        assert 1 <= scaler.spec["den"] <= 5 and 0 <= scaler.spec["vae"] <= 2
    assert {d.desired for d in scaler.calls if d.node.name == "den"} >= {1, 5}


def test_metrics_carry_depth_desired_actual_and_live_per_node() -> None:
    c, source, _ = make()
    source.depths = {"denoiser:tiny": 12, "vae:tiny": 1}
    for t in range(3):
        c.tick(now=float(t))
    den = {"role": "denoiser", "model": "tiny"}
    assert sample(c, "dfleet_controller_queue_depth", **den) == 12
    assert sample(c, "dfleet_controller_desired_replicas", **den) == 3
    assert sample(c, "dfleet_controller_actual_replicas", **den) == 1  # pods still starting
    c.tick(now=3.0)
    c.tick(now=4.0)
    assert sample(c, "dfleet_controller_actual_replicas", **den) == 3
    assert sample(c, "dfleet_controller_live_replicas", **den) == 1
    assert sample(c, "dfleet_controller_live_replicas", role="vae", model="tiny") == 1
    assert sample(c, "dfleet_controller_scalings_total", **den) == 1


def test_each_decision_is_logged_as_json_with_its_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    c, source, _ = make()
    source.depths = {"denoiser:tiny": 20}
    with caplog.at_level(logging.INFO, logger="dfleet.controller"):
        for t in range(4):
            c.tick(now=float(t))
    entries = [json.loads(r.getMessage()) for r in caplog.records
               if r.levelno == logging.INFO and r.getMessage().startswith("{")]
    den = [(e["current"], e["desired"], e["reason"]) for e in entries if e.get("node") == "den"]
    assert den == [(1, 1, "wait_up_window"), (1, 5, "scale_up"), (5, 5, "steady")]
    assert {"depth", "recommendation", "deployment", "namespace"} <= set(entries[0])


def test_background_thread_ticks_and_serves_metrics_over_http() -> None:
    source, scaler = FakeSource(), FakeScaler({"den": 1, "vae": 0})
    source.depths = {"vae:tiny": 4}
    fast = ControllerSettings(nodes=tuple(
        NodeSettings(**{**n.__dict__, "up_stabilization_s": 0}) for n in settings().nodes),
        tick_s=0.02)
    c = Controller(fast, source, scaler, ControllerMetrics())
    port = c.metrics.serve(0, addr="127.0.0.1")
    c.start()
    try:
        deadline = time.monotonic() + 60   # generous: ticks starve on a loaded machine
        while scaler.spec["vae"] != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scaler.spec["vae"] == 1
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'dfleet_controller_desired_replicas{model="tiny",role="vae"} 1.0' in body
    finally:
        c.stop()
        c.metrics.close()
