"""A whole fleet on one machine: Redis plus one process per service role.

Used by ``dfleet up``, the tests and the benchmarks. Each service is a real
process with its own gRPC server on a free loopback port; tensors move
between them by shared memory.

The launcher supervises what it started: a service that fails (a non-zero
exit status: a crash, SIGKILL, the OOM killer) has its shared-memory segments
unlinked and is started again on the same port, with a growing pause when it
keeps failing; one that stopped cleanly stays down. Services
and redis-server stop when the launcher dies, even by SIGKILL.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.tls import TlsFiles, open_channel

ROLES = ("text_encoder", "image_encoder", "ar_embed", "vae", "lora_cache", "controlnet",
         "denoiser", "gateway")
SUPERVISE_POLL_S = 0.5
RESTART_PAUSE_S = (0.5, 30.0)   # first and longest pause before a crashed service restarts
STABLE_S = 60.0                 # a service up this long has its pause reset

log = logging.getLogger("dfleet.launcher")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the launcher dies (Linux), even by SIGKILL."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


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
    index: int = 0
    extra_args: tuple[str, ...] = ()
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float = 0.0      # when a crashed service may start again (monotonic)


def start_redis(log_file: Path) -> tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH; install it (apt-get install "
                           "redis-server) or pass --redis-url")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=open(log_file, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_die_with_parent)
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


def tls_of(env: dict[str, str]) -> TlsFiles | None:
    """The TLS files a fleet's services get from ``env`` (``DFLEET_TLS_*``), if any."""
    if not env.get("DFLEET_TLS_CERT"):
        return None
    return TlsFiles(env["DFLEET_TLS_CERT"], env.get("DFLEET_TLS_KEY", ""),
                    env.get("DFLEET_TLS_CA", ""))


def wait_healthy(address: str, timeout_s: float, tls: TlsFiles | None = None) -> None:
    if not address:
        raise ValueError("no address to check (the service has not bound its port yet)")
    deadline = time.monotonic() + timeout_s
    with open_channel(address, tls) as channel:
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
    restart_crashed: bool = True
    """Start a service again when it exits on its own (see the module docstring)."""
    services: list[ServiceProcess] = field(default_factory=list)
    redis_process: subprocess.Popen | None = None  # type: ignore[type-arg]

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir or tempfile.mkdtemp(prefix="dfleet-")
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        self._activation_dir = ""
        if "DFLEET_ACTIVATION_DIR" not in {**os.environ, **self.env}:
            # The template activation store: this fleet's own, owner-only (mkdtemp: 0700),
            # in memory when the machine has /dev/shm; removed when the fleet stops.
            shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
            self._activation_dir = tempfile.mkdtemp(prefix="dfleet-activations-", dir=shm)
            self.env = {**self.env, "DFLEET_ACTIVATION_DIR": self._activation_dir}
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def tls(self) -> TlsFiles | None:
        return tls_of({**os.environ, **self.env})

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
        if self.restart_crashed:
            self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                                name="fleet-supervisor")
            self._supervisor.start()
        return self

    @property
    def http_address(self) -> str:
        return next((s.address for s in self.services if s.role == "http_front"), "")

    def spawn(self, role: str, extra_args: Sequence[str] = ()) -> ServiceProcess:
        with self._lock:
            index = sum(1 for s in self.services if s.role == role)
            service = self._launch(role, index, 0, tuple(extra_args))
            self.services.append(service)
        return service

    def _launch(self, role: str, index: int, port: int,
                extra_args: tuple[str, ...] = ()) -> ServiceProcess:
        state = Path(self.state_dir)
        port_file = state / f"{role}-{index}.port"
        port_file.unlink(missing_ok=True)
        log_file = state / f"{role}-{index}.log"
        # DFLEET_PARENT_PID: the service stops when this process dies, even by SIGKILL.
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error",
               "DFLEET_PARENT_PID": str(os.getpid()), **self.env}
        cmd = [sys.executable, "-m", f"services.{role}", "--models-dir", self.models_dir,
               "--redis-url", self.redis_url, "--host", "127.0.0.1", "--port", str(port),
               "--port-file", str(port_file), *extra_args]
        proc = subprocess.Popen(cmd, stdout=open(log_file, "ab"), stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        return ServiceProcess(role, proc, port_file, log_file, index=index,
                              extra_args=extra_args)

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_POLL_S):
            with self._lock:
                for i, service in enumerate(self.services):
                    replacement = self._check(service)
                    if replacement is not None:
                        self.services[i] = replacement

    def _check(self, service: ServiceProcess) -> ServiceProcess | None:
        """Notes the address of a restarted service; starts a crashed one again (one that
        stopped cleanly, exit status 0, was stopped on purpose and stays down)."""
        if service.process.poll() is None:
            if not service.address and service.port_file.exists():
                bound = service.port_file.read_text().strip()
                service.address = f"127.0.0.1:{bound}" if bound else ""
            return None
        if service.process.returncode == 0:
            return None
        now = time.monotonic()
        if not service.restart_at:
            up_s = now - service.started_at
            pause = RESTART_PAUSE_S[0] if up_s > STABLE_S else min(
                RESTART_PAUSE_S[1], RESTART_PAUSE_S[0] * 2 ** min(service.restarts, 10))
            service.restart_at = now + pause
            log.warning("%s-%d (pid %d) exited with %s; restarting in %.1f s", service.role,
                        service.index, service.process.pid, service.process.returncode, pause)
            _reap_segments()
            return None
        if now < service.restart_at:
            return None
        # The same port keeps the address every peer and client knows, unless the last
        # start on it failed before serving (the port may have been taken meanwhile).
        port = int(service.address.rsplit(":", 1)[1]) if service.address else 0
        replacement = self._launch(service.role, service.index, port, service.extra_args)
        replacement.restarts = service.restarts + 1
        return replacement

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
        if http:
            wait_http_healthy(service.address, 30)
        else:
            wait_healthy(service.address, 30, self.tls)

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
            self._supervisor = None
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
        if self._activation_dir:
            shutil.rmtree(self._activation_dir, ignore_errors=True)

    def describe(self) -> dict[str, object]:
        tls = self.tls
        return {"redis_url": self.redis_url, "gateway": self.gateway_address,
                "tls": [tls.cert_file, tls.key_file, tls.ca_file] if tls else None,
                "http": self.http_address,
                "state_dir": self.state_dir,
                "redis_pid": self.redis_process.pid if self.redis_process else None,
                "services": [{"role": s.role, "address": s.address, "pid": s.process.pid,
                              "restarts": s.restarts, "log": str(s.log_file)}
                             for s in self.services]}

    def write_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.describe(), indent=1))

    def __enter__(self) -> LocalFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reap_segments() -> None:
    """Unlinks the shared-memory segments of dead processes (a crashed service's)."""
    from services.common.transport.shm import reap_orphans  # imports torch: only when needed

    try:
        reap_orphans()
    except Exception:  # noqa: BLE001 - a later start reaps them too
        log.warning("could not reap shared memory", exc_info=True)


def service_health(service: dict[str, object], timeout_s: float = 1.0,
                   tls: TlsFiles | None = None) -> str:
    """What ``dfleet status`` shows for one service of a fleet's state file."""
    pid = int(service["pid"])  # type: ignore[call-overload]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "DOWN (exited)"
    except PermissionError:
        pass
    if not service.get("address"):
        return "starting"
    if service.get("role") == "http_front":
        try:
            wait_http_healthy(str(service["address"]), timeout_s)
            return "up"
        except RuntimeError:
            return "DOWN (no answer on /healthz)"
    with open_channel(str(service["address"]), tls) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=timeout_s)
        except grpc.RpcError as err:
            return f"DOWN (no answer: {err.code().name})"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"DOWN ({health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)})"
    return "up"
