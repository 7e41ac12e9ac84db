"""A whole fleet on one machine: Redis plus one process per service role.

Used by ``dfleet up``, the tests and the benchmarks. Each service is a real
process with its own gRPC server on a free loopback port; tensors move
between them by shared memory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROLES = ("text_encoder", "image_encoder", "vae", "lora_cache", "controlnet", "denoiser",
         "gateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    role: str
    process: subprocess.Popen  # type: ignore[type-arg]
    port_file: Path
    log_file: Path
    address: str = ""


def start_redis(log_file: Path) -> tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH; install it (apt-get install "
                           "redis-server) or pass --redis-url")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=open(log_file, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {log_file}") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start within 20 s")


def wait_http_healthy(address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"http://{address} not healthy after {timeout_s} s")
        time.sleep(0.1)


def wait_healthy(address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address} not healthy after {timeout_s} s")
            time.sleep(0.1)


@dataclass
class LocalFleet:
    """Starts on ``start()`` / ``with``; ``replicas`` gives processes per role (default 1)."""

    models_dir: str
    redis_url: str = ""
    state_dir: str = ""
    replicas: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 120.0
    http_port: int | None = None
    """Also start the HTTP front on this port (0 picks one); None: no HTTP front."""
    services: list[ServiceProcess] = field(default_factory=list)
    redis_process: subprocess.Popen | None = None  # type: ignore[type-arg]

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir or tempfile.mkdtemp(prefix="dfleet-")
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)

    @property
    def gateway_address(self) -> str:
        return next(s.address for s in self.services if s.role == "gateway")

    def start(self) -> LocalFleet:
        state = Path(self.state_dir)
        if not self.redis_url:
            self.redis_process, self.redis_url = start_redis(state / "redis.log")
        try:
            for role in ROLES:
                for _ in range(self.replicas.get(role, 1)):
                    self.spawn(role)
            for service in self.services:
                self._wait_port(service)
            if self.http_port is not None:
                self._wait_port(self.spawn("http_front", ["--gateway", self.gateway_address,
                                                          "--port", str(self.http_port)]),
                                http=True)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def http_address(self) -> str:
        return next((s.address for s in self.services if s.role == "http_front"), "")

    def spawn(self, role: str, extra_args: Sequence[str] = ()) -> ServiceProcess:
        state = Path(self.state_dir)
        index = sum(1 for s in self.services if s.role == role)
        port_file = state / f"{role}-{index}.port"
        port_file.unlink(missing_ok=True)
        log_file = state / f"{role}-{index}.log"
        # DFLEET_PARENT_PID: the service stops when this process dies, even by SIGKILL.
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error",
               "DFLEET_PARENT_PID": str(os.getpid()), **self.env}
        cmd = [sys.executable, "-m", f"services.{role}", "--models-dir", self.models_dir,
               "--redis-url", self.redis_url, "--host", "127.0.0.1", "--port", "0",
               "--port-file", str(port_file), *extra_args]
        proc = subprocess.Popen(cmd, stdout=open(log_file, "ab"), stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        service = ServiceProcess(role, proc, port_file, log_file)
        self.services.append(service)
        return service

    def _wait_port(self, service: ServiceProcess, http: bool = False) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while not service.port_file.exists() or not service.port_file.read_text().strip():
            if service.process.poll() is not None:
                tail = service.log_file.read_text()[-3000:]
                raise RuntimeError(f"{service.role} exited with {service.process.returncode}:\n"
                                   f"{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service.role} did not start in {self.startup_timeout_s} s")
            time.sleep(0.05)
        service.address = f"127.0.0.1:{service.port_file.read_text().strip()}"
        (wait_http_healthy if http else wait_healthy)(service.address, 30)

    def stop(self, timeout_s: float = 15.0) -> None:
        for service in self.services:
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for service in self.services:
            try:
                service.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        self.services.clear()
        if self.redis_process is not None:
            self.redis_process.terminate()
            self.redis_process.wait(10)
            self.redis_process = None

    def describe(self) -> dict[str, object]:
        return {"redis_url": self.redis_url, "gateway": self.gateway_address,
                "http": self.http_address,
                "state_dir": self.state_dir,
                "redis_pid": self.redis_process.pid if self.redis_process else None,
                "services": [{"role": s.role, "address": s.address, "pid": s.process.pid,
                              "log": str(s.log_file)} for s in self.services]}

    def write_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.describe(), indent=1))

    def __enter__(self) -> LocalFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
