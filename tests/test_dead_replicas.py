"""Dead replicas and their launcher, through real processes.

- A channel whose peer died marks it unreachable until it heartbeats again (unit, real
  gRPC server on loopback).
- A SIGKILLed denoiser leaves placement at once: of the requests sent right after, at most
  the first can meet the dead connection, and none is placed on the dead replica.
- The local launcher restarts a crashed service on its address and unlinks its segments;
  `dfleet status` tells the dead process from the live ones.
- redis-server dies with a SIGKILLed launcher; services exit on repeated stop signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import dfleet
from dfleet.local_fleet import LocalFleet, ServiceProcess, service_health, wait_healthy
from services.common.channels import ChannelPool

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 120.0


def _wait(condition: Any, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_failed_connection_marks_the_peer_unreachable_until_it_heartbeats() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    pool = ChannelPool()
    try:
        health_pb2_grpc.HealthStub(pool.get(address)).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=10)
        beat = time.time()
        assert pool.reachable(address, beat)
        server.stop(0).wait()
        _wait(lambda: not pool.reachable(address, beat), "the dead peer to be noticed")
        # A replica started again on the same port heartbeats: back in placement, and the
        # pool's next channel reaches it at once (not after the dead one's reconnect backoff).
        server = grpc.server(futures.ThreadPoolExecutor(2))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_insecure_port(address)
        server.start()
        assert pool.reachable(address, time.time() + 1.0)
        reply = health_pb2_grpc.HealthStub(pool.get(address)).Check(
            health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        pool.close()
        server.stop(0)


@pytest.fixture(scope="module")
def two_denoisers(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[LocalFleet]:
    local = LocalFleet(str(tiny_models), state_dir=str(tmp_path_factory.mktemp("dead")),
                       replicas={"denoiser": 2},
                       env={"DFLEET_INLINE_MAX_BYTES": "1", "OMP_WAIT_POLICY": "PASSIVE",
                            "DFLEET_PRELOAD": "all",   # both hold the model: requests spread
                            "DFLEET_ACTIVATION_DIR": str(tmp_path_factory.mktemp("act"))})
    with local:
        yield local


def _segments_of(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith("dfleet-")
            and n.split("-")[2:3] == [str(pid)]]


def _service(fleet: LocalFleet, role: str, index: int = 0) -> ServiceProcess:
    return next(s for s in fleet.services if s.role == role and s.index == index)


def test_killed_denoiser_leaves_placement_and_comes_back(two_denoisers: LocalFleet) -> None:
    fleet = two_denoisers
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        # The replica the gateway prefers (its step time is measured) is the one to kill.
        preferred = client.generate("warm", steps=2).metadata["denoiser"]
        victim = next(s for s in fleet.services if s.role == "denoiser"
                      and preferred in s.log_file.read_text())
        segments = _segments_of(victim.process.pid)
        victim_address = victim.address
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(30)
        placed, failures = [], []
        for i in range(6):
            try:
                placed.append(client.generate("after the kill", steps=2, seed=i)
                              .metadata["denoiser"])
            except dfleet.Unavailable as exc:
                failures.append((i, exc))
        assert not failures or [i for i, _ in failures] == [0], failures
        assert len(placed) >= 5 and preferred not in placed, placed
        # The launcher restarts it on the same address and unlinks the dead one's segments.
        _wait(lambda: _service(fleet, "denoiser", victim.index).restarts == 1,
              "the denoiser to be restarted")
        _wait(lambda: _service(fleet, "denoiser", victim.index).address == victim_address,
              "the launcher to note the restarted denoiser's address")
        wait_healthy(victim_address, WAIT_S)
        assert not _segments_of(victim.process.pid), segments
        assert client.generate("restarted", steps=2).png.startswith(b"\x89PNG")


def test_status_tells_dead_from_live(two_denoisers: LocalFleet, tmp_path: Path) -> None:
    fleet = two_denoisers
    _wait(lambda: all(s.address for s in fleet.services), "every service's address")
    for service in fleet.services:
        wait_healthy(service.address, WAIT_S)
    state = {**fleet.describe(), "supervisor_pid": os.getpid()}
    (tmp_path / "fleet.json").write_text(json.dumps(state))
    status = _status(tmp_path)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count(" up") == len(fleet.services) + 1   # + the launcher
    victim = _service(fleet, "vae")
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(30)
    status = _status(tmp_path)             # the snapshot still names the killed process
    assert status.returncode == 1
    line = next(x for x in status.stdout.splitlines() if x.strip().startswith("vae"))
    assert "DOWN" in line, status.stdout
    assert service_health(next(s for s in state["services"] if s["role"] == "gateway")) == "up"


def _status(state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dfleet", "status", "--state-dir",
                           str(state_dir)], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


LAUNCHER = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from dfleet.local_fleet import start_redis
proc, url = start_redis(Path({log!r}))
print(proc.pid, flush=True)
time.sleep(600)
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_redis_dies_with_a_killed_launcher(tmp_path: Path) -> None:
    script = LAUNCHER.format(root=str(ROOT), log=str(tmp_path / "redis.log"))
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                text=True)
    redis_pid = 0
    try:
        assert launcher.stdout is not None
        redis_pid = int(launcher.stdout.readline())
        assert not _gone(redis_pid)
        launcher.kill()
        launcher.wait(10)
        _wait(lambda: _gone(redis_pid), "redis-server to stop with its launcher", 30)
    finally:
        launcher.kill()
        if redis_pid and not _gone(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)


SIGNAL_PATTERNS = {
    "two_sigterms_back_to_back": (signal.SIGTERM, 0.0, signal.SIGTERM),
    "two_sigterms_8ms_apart": (signal.SIGTERM, 0.008, signal.SIGTERM),
    "sigint_then_sigterm": (signal.SIGINT, 0.002, signal.SIGTERM),
}


@pytest.mark.slow  # a minute of signals (pytest -m slow)
def test_services_exit_cleanly_on_repeated_signals(tiny_models: Path, tmp_path: Path) -> None:
    started = {}
    for name in SIGNAL_PATTERNS:
        port_file = tmp_path / f"{name}.port"
        started[name] = (subprocess.Popen(
            [sys.executable, "-m", "services.lora_cache", "--models-dir", str(tiny_models),
             "--port", "0", "--port-file", str(port_file)], cwd=ROOT,
            stdout=open(tmp_path / f"{name}.log", "wb"), stderr=subprocess.STDOUT),
            port_file)
    try:
        for name, (proc, port_file) in started.items():
            _wait(lambda p=port_file: p.exists() and p.read_text().strip(),  # type: ignore[misc]
                  f"{name} to serve")
            first, gap, second = SIGNAL_PATTERNS[name]
            proc.send_signal(first)
            time.sleep(gap)
            proc.send_signal(second)
        for name, (proc, _) in started.items():
            assert proc.wait(60) == 0, (name, (tmp_path / f"{name}.log").read_text()[-2000:])
            assert "stopped" in (tmp_path / f"{name}.log").read_text()
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()


def test_activation_store_is_the_fleets_own_and_owner_only(tmp_path: Path) -> None:
    local = LocalFleet(str(tmp_path), state_dir=str(tmp_path / "state"))
    store = Path(local.env["DFLEET_ACTIVATION_DIR"])
    assert store.is_dir() and store.name.startswith("dfleet-activations-")
    assert store.stat().st_mode & 0o777 == 0o700
    assert store != Path("/dev/shm/dfleet-activations")
    other = LocalFleet(str(tmp_path), state_dir=str(tmp_path / "other"))
    assert other.env["DFLEET_ACTIVATION_DIR"] != str(store)
    local.stop()
    other.stop()
    assert not store.exists()
