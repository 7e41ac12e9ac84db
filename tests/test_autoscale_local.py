"""Local autoscaling (``dfleet up --autoscale``): the controller loop with the LocalScaler on
a real redis-server, starting and stopping real service processes
(``python -m services.<role>``).

Covers: a burst on the ControlNet queue starts ControlNet processes (they heartbeat into
Redis) while the idle VAE keeps its one; after the burst they are stopped (SIGTERM,
they deregister) down to zero; ``stop()`` ends every process. Also, with small
stand-in commands: the command template, a replica that dies stops counting, and one
that ignores SIGTERM is killed after the stop timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from controller.local_scaler import LocalAutoscaler, LocalScaler, default_local_settings
from controller.scaler import Decision
from controller.settings import NodeSettings, load_config, settings_from_dict
from services.common.fleet_state import FleetState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30   # generous: a loaded machine starts it slowly
        while True:
            try:
                redis.Redis(port=port, socket_connect_timeout=0.2).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the scaler reaps its children, so treat it as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


CONFIG = {"tick_s": 0.2, "defaults": {"target_depth_per_replica": 2, "tolerance": 0.1,
                                      "up_stabilization_s": 0.4, "down_stabilization_s": 1.0,
                                      "idle_to_zero_s": 1.0}, "nodes": [
    {"name": "controlnet", "role": "controlnet", "model": "tiny-cn-a", "min_replicas": 0,
     "max_replicas": 3},
    {"name": "vae", "role": "vae", "model": "tiny-sd", "min_replicas": 1, "max_replicas": 2}]}


@pytest.mark.slow  # a burst and a lull of real processes
def test_burst_starts_real_service_processes_and_the_lull_stops_them(
        redis_url: str, tmp_path: Path) -> None:
    fleet = FleetState(redis.Redis.from_url(redis_url))
    auto = LocalAutoscaler(settings_from_dict(CONFIG), models_dir=tmp_path / "models",
                           redis_url=redis_url, log_dir=tmp_path / "logs",
                           env={"DFLEET_HEARTBEAT_S": "0.5", "DFLEET_TORCH_THREADS": "1"})
    (tmp_path / "models").mkdir()
    auto.start()
    try:
        wait_for("the VAE's min replica", lambda: len(fleet.replicas("vae")) == 1)
        assert fleet.replicas("controlnet") == []

        fleet.add_depth("controlnet", "tiny-cn-a", 6)          # 6 / 2 per replica -> 3
        wait_for("three ControlNet replicas heartbeating",
                 lambda: len(fleet.replicas("controlnet")) == 3)
        pids = auto.scaler.processes("controlnet")
        assert len(pids) == 3 and all(alive(p) for p in pids)
        addresses = {r.address for r in fleet.replicas("controlnet")}
        assert len(addresses) == 3                              # three real gRPC servers
        assert len(auto.scaler.processes("vae")) == 1           # only the busy model grew

        fleet.add_depth("controlnet", "tiny-cn-a", -6)
        wait_for("ControlNet back to zero", lambda: auto.scaler.processes("controlnet") == [])
        wait_for("their processes to exit", lambda: not any(alive(p) for p in pids), 90)
        assert fleet.replicas("controlnet") == []               # they deregistered
        vae_pids = auto.scaler.processes("vae")
    finally:
        auto.stop()
    assert not any(alive(p) for p in vae_pids)
    assert fleet.replicas("vae") == []


def node(name: str = "svc") -> NodeSettings:
    return NodeSettings(name=name, role="vae", model="tiny-sd", min_replicas=0, max_replicas=3)


def decision(n: NodeSettings, current: int, desired: int) -> Decision:
    return Decision(node=n, namespace="", depth=0, current=current, desired=desired,
                    recommendation=desired, reason="test")


def test_in_code_defaults_match_the_example_config() -> None:
    example = load_config(Path(__file__).resolve().parents[1] / "deploy/controller.local.yaml")
    defaults = default_local_settings(max_replicas=3)

    def shape(n: NodeSettings) -> tuple[object, ...]:
        return (n.role, n.model, n.min_replicas, n.max_replicas, n.target_depth_per_replica,
                n.up_stabilization_s, n.down_stabilization_s, n.idle_to_zero_s)

    assert sorted(map(shape, defaults.nodes)) == sorted(map(shape, example.nodes))
    assert {n.name for n in defaults.nodes} == {n.name for n in example.nodes}


def test_default_command_template_runs_the_role_module() -> None:
    scaler = LocalScaler("/m", "redis://r:1/0")
    assert scaler.argv(node(), 1) == [sys.executable, "-m", "services.vae", "--models-dir", "/m",
                                      "--redis-url", "redis://r:1/0", "--host", "127.0.0.1",
                                      "--port", "0"]
    custom = LocalScaler("/m", "r", command=["run", "{role}", "{model}", "{node}-{index}"])
    assert custom.argv(node("x"), 7) == ["run", "vae", "tiny-sd", "x-7"]


def test_a_replica_that_dies_stops_counting() -> None:
    n = node()
    scaler = LocalScaler("/m", "r", command=lambda _node, i: [
        sys.executable, "-c", f"import sys, time; time.sleep({0 if i == 1 else 60}); sys.exit(3)"])
    try:
        scaler.scale(decision(n, 0, 2))
        wait_for("the first replica to exit", lambda: scaler.replicas(n).spec == 1, 90)
    finally:
        scaler.close(timeout_s=5)
    assert scaler.replicas(n).spec == 0


def test_a_replica_ignoring_sigterm_is_killed_after_the_timeout() -> None:
    n = node()
    stubborn = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); time.sleep(60)")
    scaler = LocalScaler("/m", "r", command=[sys.executable, "-u", "-c", stubborn],
                         stop_timeout_s=0.5)
    scaler.scale(decision(n, 0, 1))
    pid = scaler.processes(n.name)[0]
    time.sleep(0.3)  # let it install its handler; otherwise SIGTERM kills it early anyway
    scaler.scale(decision(n, 1, 0))
    assert scaler.replicas(n).spec == 0

    def killed() -> bool:
        scaler.replicas(n)  # each call reaps, and kills what outlived its stop timeout
        return not alive(pid)

    wait_for("SIGKILL after the stop timeout", killed, 60)
