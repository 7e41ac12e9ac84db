"""The controller end to end against a real redis-server and the real ``kubernetes`` client
talking HTTP to kmock's Kubernetes API emulator (no apiserver runs on these machines).

Covers: queue depth written to Redis makes the controller patch the Deployment's
``deployments/scale`` to the expected count and record a core/v1 Event saying why;
scaling back down after the window; a Redis outage (the server stopped, then started
again on the same port) and an unreachable API are survived and retried; the
``python -m controller`` entry point with a kubeconfig file does the same.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import redis
import yaml
from kubernetes import client
from redis.backoff import NoBackoff
from redis.retry import Retry

from controller.cli import main
from controller.kubernetes_scaler import KubernetesScaler
from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.settings import settings_from_dict
from controller.sources import QueueDepthSource
from services.common.fleet_state import FleetState

NS = "diffusion"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """A redis-server on ``port``; started again while the port is still held (a Redis just
    shut down on it may not have let go yet on a loaded machine)."""
    deadline = time.monotonic() + 60
    proc = _redis_process(port)
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port, socket_connect_timeout=0.2).ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None:   # could not bind yet
                proc = _redis_process(port)
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _redis_process(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def redis_port() -> Iterator[int]:
    port = free_port()
    proc = start_redis(port)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def kube_api() -> Iterator[str]:
    """kmock's emulator serving on a loopback port from its own event-loop thread."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with kmock.KubernetesEmulator() as km, kmock.Server(km) as server:
            box.update(url=str(server.url).rstrip("/"), loop=asyncio.get_running_loop(),
                       stop=asyncio.Event())
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "kmock did not start"
    yield box["url"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)


def kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: test, cluster: {{server: "{url}"}}}}]
users: [{{name: test, user: {{token: not-checked}}}}]
contexts: [{{name: test, context: {{cluster: test, user: test, namespace: {NS}}}}}]
current-context: test
""")
    return path


def api(url: str) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = url
    return client.ApiClient(cfg)


def create_deployment(url: str, name: str, replicas: int) -> None:
    labels = {"app": name}
    body: Any = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "svc", "image": "dfleet"}]}}},
        "status": {"replicas": replicas}}
    client.AppsV1Api(api(url)).create_namespaced_deployment(NS, body)


def replicas_of(url: str, name: str) -> int:
    scale: Any = client.AppsV1Api(api(url)).read_namespaced_deployment_scale(name, NS)
    return int(scale.spec.replicas)


def events(url: str) -> list[Any]:
    return list(client.CoreV1Api(api(url)).list_namespaced_event(NS).items)


CONFIG = {"namespace": NS, "defaults": {
    "target_depth_per_replica": 4, "up_stabilization_s": 2, "down_stabilization_s": 5,
    "tolerance": 0.1}, "nodes": [
    {"name": "denoiser-tiny", "role": "denoiser", "model": "tiny", "deployment": "dfleet-den",
     "min_replicas": 1, "max_replicas": 6},
    {"name": "controlnet-cn", "role": "controlnet", "model": "cn", "deployment": "dfleet-cn",
     "min_replicas": 0, "max_replicas": 3, "idle_to_zero_s": 3}]}


def test_depth_in_redis_patches_deployment_scale_and_records_an_event(
        redis_port: int, kube_api: str, tmp_path: Path) -> None:
    create_deployment(kube_api, "dfleet-den", 1)
    create_deployment(kube_api, "dfleet-cn", 0)
    fleet = FleetState(redis.Redis(port=redis_port))
    scaler = KubernetesScaler.connect(kubeconfig=str(kubeconfig(tmp_path, kube_api)))
    ctl = Controller(settings_from_dict(CONFIG),
                     QueueDepthSource.from_url(f"redis://127.0.0.1:{redis_port}/0"),
                     scaler, ControllerMetrics())

    fleet.add_depth("denoiser", "tiny", 18)      # 18 / 4 per replica -> 5
    fleet.add_depth("controlnet", "cn", 2)
    for t in range(3):
        ctl.tick(now=float(t))
    assert (replicas_of(kube_api, "dfleet-den"), replicas_of(kube_api, "dfleet-cn")) == (5, 1)
    recorded = {(e.involved_object.name, e.reason) for e in events(kube_api)}
    assert recorded == {("dfleet-den", "ScaleUp"), ("dfleet-cn", "Activate")}
    den_event = next(e for e in events(kube_api) if e.involved_object.name == "dfleet-den")
    assert den_event.involved_object.kind == "Deployment" and den_event.type == "Normal"
    assert "1 -> 5 replicas (scale_up; queue depth 18" in den_event.message
    assert den_event.source.component == "dfleet-controller"

    fleet.add_depth("denoiser", "tiny", -18)     # the burst is over
    fleet.add_depth("controlnet", "cn", -2)
    for t in range(3, 8):
        ctl.tick(now=float(t))
    assert replicas_of(kube_api, "dfleet-den") == 5   # the down window has not passed
    for t in range(8, 13):
        ctl.tick(now=float(t))
    assert (replicas_of(kube_api, "dfleet-den"), replicas_of(kube_api, "dfleet-cn")) == (1, 0)
    reasons = sorted(e.reason for e in events(kube_api))
    assert reasons == ["Activate", "ScaleDown", "ScaleToZero", "ScaleUp"]


def test_redis_restart_and_api_outage_are_survived(
        redis_port: int, kube_api: str, tmp_path: Path) -> None:
    create_deployment(kube_api, "dfleet-den", 1)
    create_deployment(kube_api, "dfleet-cn", 0)
    url = f"redis://127.0.0.1:{redis_port}/0"
    good = KubernetesScaler.connect(kubeconfig=str(kubeconfig(tmp_path, kube_api)))
    dead = KubernetesScaler.connect(kubeconfig=str(kubeconfig(
        tmp_path, f"http://127.0.0.1:{free_port()}")), request_timeout_s=1.0)
    metrics = ControllerMetrics()
    ctl = Controller(settings_from_dict(CONFIG), QueueDepthSource.from_url(url, timeout_s=0.5),
                     dead, metrics)
    FleetState(redis.Redis(port=redis_port)).add_depth("denoiser", "tiny", 12)
    for t in range(3):
        assert ctl.tick(now=float(t)) == []       # the API is unreachable
    errors = metrics.registry.get_sample_value("dfleet_controller_scaler_errors_total",
                                               {"role": "denoiser", "model": "tiny"})
    assert errors == 3

    ctl.scaler = good
    # No client retries: SHUTDOWN's dropped connection is the expected answer.
    redis.Redis(port=redis_port, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)
    for t in range(3, 6):
        assert ctl.tick(now=float(t)) == []       # Redis is gone
    assert metrics.registry.get_sample_value("dfleet_controller_source_errors_total") == 3
    assert replicas_of(kube_api, "dfleet-den") == 1

    restarted = start_redis(redis_port)           # same port, empty: the gateway rewrites depth
    try:
        FleetState(redis.Redis(port=redis_port)).add_depth("denoiser", "tiny", 12)
        for t in range(6, 9):
            ctl.tick(now=float(t))
        assert replicas_of(kube_api, "dfleet-den") == 3
    finally:
        restarted.terminate()
        restarted.wait(10)


def test_entry_point_with_a_kubeconfig_scales_the_deployment(
        redis_port: int, kube_api: str, tmp_path: Path) -> None:
    create_deployment(kube_api, "dfleet-den", 1)
    create_deployment(kube_api, "dfleet-cn", 0)
    config = tmp_path / "controller.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "defaults": {
        **CONFIG["defaults"], "up_stabilization_s": 0}}))  # type: ignore[dict-item]
    FleetState(redis.Redis(port=redis_port)).add_depth("denoiser", "tiny", 9)
    code = main(["--config", str(config), "--scaler", "kubernetes",
                 "--kubeconfig", str(kubeconfig(tmp_path, kube_api)),
                 "--redis-url", f"redis://127.0.0.1:{redis_port}/0",
                 "--tick-s", "0.05", "--max-ticks", "3", "--metrics-port", "0"])
    assert code == 0
    assert replicas_of(kube_api, "dfleet-den") == 3   # ceil(9 / 4)
    assert [e.reason for e in events(kube_api)] == ["ScaleUp"]
