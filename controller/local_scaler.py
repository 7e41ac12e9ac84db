"""Scales model nodes on one machine by starting and stopping service processes.

:class:`LocalScaler` is the :class:`controller.scaler.Scaler` behind
``dfleet up --autoscale``: a node's replica count is the number of its processes
alive. Scaling up launches processes from a command template; scaling down sends
SIGTERM to the newest ones (services deregister and exit), and SIGKILL to any still
running after ``stop_timeout_s``. A process that dies on its own simply stops
counting, so the policy starts a new one (at once when that drops the node below
``min_replicas``).

:class:`LocalAutoscaler` bundles a Redis source, a LocalScaler and the controller
loop on a background thread: ``LocalAutoscaler(...).start()`` ... ``.stop()``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.scaler import Decision, ReplicaCount, ScalerUnavailable
from controller.settings import ControllerSettings, NodeSettings, settings_from_dict
from controller.sources import QueueDepthSource

log = logging.getLogger("dfleet.controller.local")

# Placeholders: {python} {role} {model} {node} {models_dir} {redis_url} {index}
DEFAULT_COMMAND: tuple[str, ...] = (
    "{python}", "-m", "services.{role}", "--models-dir", "{models_dir}",
    "--redis-url", "{redis_url}", "--host", "127.0.0.1", "--port", "0",
)

CommandFactory = Callable[[NodeSettings, int], Sequence[str]]


@dataclass
class _Replica:
    process: subprocess.Popen[bytes]
    log_file: IO[bytes] | None
    stop_deadline: float | None = None


class LocalScaler:
    """Runs each node's replicas as child processes of this one.

    ``command`` is either a template (a sequence of strings with the placeholders of
    :data:`DEFAULT_COMMAND`) or a callable ``(node, index) -> argv``. ``env`` is added
    to this process's environment; ``log_dir`` receives one ``{node}-{index}.log`` per
    process (default: children inherit this process's stdout and stderr).
    """

    def __init__(self, models_dir: str | Path, redis_url: str,
                 command: Sequence[str] | CommandFactory | None = None,
                 env: dict[str, str] | None = None, log_dir: str | Path | None = None,
                 stop_timeout_s: float = 10.0) -> None:
        self.models_dir = str(models_dir)
        self.redis_url = redis_url
        self.command = command if command is not None else DEFAULT_COMMAND
        self.env = {**os.environ, **(env or {})}
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.stop_timeout_s = stop_timeout_s
        self._running: dict[str, list[_Replica]] = {}
        self._stopping: list[_Replica] = []
        self._launched = 0
        # The loop thread scales while callers may list or close from another thread.
        self._lock = threading.RLock()

    def argv(self, node: NodeSettings, index: int) -> list[str]:
        """The command line of ``node``'s replica number ``index``."""
        if callable(self.command):
            return [str(part) for part in self.command(node, index)]
        values = {"python": sys.executable, "role": node.role, "model": node.model,
                  "node": node.name, "models_dir": self.models_dir,
                  "redis_url": self.redis_url, "index": str(index)}
        return [part.format(**values) for part in self.command]

    def replicas(self, node: NodeSettings, namespace: str = "") -> ReplicaCount:
        with self._lock:
            self._reap()
            alive = len(self._running.get(node.name, []))
        return ReplicaCount(spec=alive, ready=alive)

    def scale(self, decision: Decision) -> None:
        node = decision.node
        with self._lock:
            running = self._running.setdefault(node.name, [])
            while len(running) < decision.desired:
                running.append(self._launch(node))
            while len(running) > decision.desired:
                self._terminate(running.pop())
        log.info("%s: %d process(es) running", node.name, len(running))

    def processes(self, node_name: str) -> list[int]:
        """Pids of the node's running replicas, oldest first."""
        with self._lock:
            self._reap()
            return [r.process.pid for r in self._running.get(node_name, [])]

    def _launch(self, node: NodeSettings) -> _Replica:
        self._launched += 1
        argv = self.argv(node, self._launched)
        log_file: IO[bytes] | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self.log_dir / f"{node.name}-{self._launched}.log", "ab")  # noqa: SIM115 - lives as long as the process
        try:
            # Its own session: a terminal's Ctrl-C reaches this process, which stops the rest.
            # DFLEET_PARENT_PID: the replica stops when this process dies, even by SIGKILL.
            process = subprocess.Popen(argv, env={**self.env,
                                                  "DFLEET_PARENT_PID": str(os.getpid())},
                                       stdout=log_file,
                                       stderr=subprocess.STDOUT if log_file else None,
                                       start_new_session=True)
        except OSError as exc:
            if log_file is not None:
                log_file.close()
            raise ScalerUnavailable(f"cannot start {argv[0]}: {exc}") from exc
        log.info("started %s replica pid %d: %s", node.name, process.pid, " ".join(argv))
        return _Replica(process, log_file)

    def _terminate(self, replica: _Replica) -> None:
        if replica.process.poll() is None:
            replica.process.send_signal(signal.SIGTERM)
        replica.stop_deadline = time.monotonic() + self.stop_timeout_s
        self._stopping.append(replica)

    def _reap(self) -> None:
        for name, running in self._running.items():
            for replica in [r for r in running if r.process.poll() is not None]:
                log.warning("%s replica pid %d exited with %s", name, replica.process.pid,
                            replica.process.returncode)
                running.remove(replica)
                self._close_log(replica)
        now = time.monotonic()
        for replica in list(self._stopping):
            if replica.process.poll() is not None:
                self._stopping.remove(replica)
                self._close_log(replica)
            elif replica.stop_deadline is not None and now >= replica.stop_deadline:
                log.warning("pid %d ignored SIGTERM; killing it", replica.process.pid)
                replica.process.kill()

    @staticmethod
    def _close_log(replica: _Replica) -> None:
        if replica.log_file is not None:
            replica.log_file.close()
            replica.log_file = None

    def close(self, timeout_s: float | None = None) -> None:
        """Stops every process (SIGTERM, then SIGKILL after the timeout) and waits for them."""
        with self._lock:
            self._close(timeout_s)

    def _close(self, timeout_s: float | None) -> None:
        for running in self._running.values():
            while running:
                self._terminate(running.pop())
        deadline = time.monotonic() + (self.stop_timeout_s if timeout_s is None else timeout_s)
        for replica in self._stopping:
            try:
                replica.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()
            self._close_log(replica)
        self._stopping.clear()


# Short windows, so a burst on one machine visibly grows and shrinks the busy node.
LOCAL_DEFAULTS: dict[str, float] = {
    "target_depth_per_replica": 2, "tolerance": 0.1, "up_stabilization_s": 2,
    "down_stabilization_s": 15, "idle_to_zero_s": 30}


def default_local_settings(model: str = "tiny-sd", controlnets: Sequence[str] = ("tiny-cn-a",),
                           max_replicas: int = 3) -> ControllerSettings:
    """The nodes of ``deploy/controller.local.yaml`` for ``model``: text encoder and VAE
    (one or two), denoiser and each ControlNet (one to ``max_replicas``). Every node keeps
    one replica: at zero the gateway refuses requests instead of waiting for a replica."""
    nodes: list[dict[str, object]] = [
        {"name": "text-encoder", "role": "text_encoder", "model": model, "max_replicas": 1},
        {"name": "denoiser", "role": "denoiser", "model": model, "max_replicas": max_replicas},
        {"name": "vae", "role": "vae", "model": model, "max_replicas": 2},
    ]
    nodes += [{"name": f"controlnet-{name}", "role": "controlnet", "model": name,
               "max_replicas": max_replicas} for name in controlnets]
    return settings_from_dict({"defaults": {**LOCAL_DEFAULTS, "min_replicas": 1},
                               "nodes": nodes})


class LocalAutoscaler:
    """The controller loop over a :class:`LocalScaler`, on a background thread.

    ``start()`` returns at once (nodes below ``min_replicas`` get their processes on
    the first tick); ``stop()`` ends the loop and stops every process it started.
    """

    def __init__(self, settings: ControllerSettings, models_dir: str | Path, redis_url: str,
                 command: Sequence[str] | CommandFactory | None = None,
                 env: dict[str, str] | None = None, log_dir: str | Path | None = None,
                 metrics_port: int | None = None) -> None:
        self.scaler = LocalScaler(models_dir, redis_url, command=command, env=env,
                                  log_dir=log_dir)
        self.controller = Controller(settings, QueueDepthSource.from_url(redis_url),
                                     self.scaler, ControllerMetrics())
        self.metrics_port = metrics_port

    def start(self) -> LocalAutoscaler:
        if self.metrics_port is not None:
            self.metrics_port = self.controller.metrics.serve(self.metrics_port)
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
        self.scaler.close()
        self.controller.metrics.close()
