"""``dfleet controller`` / ``python -m controller``: run the autoscaling loop.

Examples::

    # in a cluster (what the Helm chart runs)
    python -m controller --config /etc/dfleet/controller.yaml --scaler kubernetes \\
        --in-cluster --redis-url redis://dfleet-redis:6379/0 --metrics-port 9100
    # one machine: start and stop service processes
    python -m controller --config deploy/controller.local.yaml --scaler local \\
        --models-dir models --redis-url redis://127.0.0.1:6379/0
    # validate a config file and exit
    python -m controller --config deploy/controller.example.yaml --check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.scaler import Scaler
from controller.settings import ConfigError, ControllerSettings, load_config
from controller.sources import QueueDepthSource
from dfleet.help_format import HelpFormatter
from services.common.settings import configure_logging, mask_url_password
from services.common.stop_signals import STOP_SIGNALS, wait_for_stop_signal

log = logging.getLogger("dfleet.controller")


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="dfleet controller", formatter_class=HelpFormatter,
                                description=("Scale each model node on its queue depth in "
                                             "Redis, through the Kubernetes API or as local "
                                             "processes."))
    p.add_argument("--config", default=env("DFLEET_CONTROLLER_CONFIG"), required=not env(
        "DFLEET_CONTROLLER_CONFIG"), help="YAML file of model nodes (env DFLEET_CONTROLLER_CONFIG)")
    p.add_argument("--redis-url", default=env("DFLEET_REDIS_URL", "redis://127.0.0.1:6379/0"),
                   help="Redis holding queue depth and heartbeats (env DFLEET_REDIS_URL)")
    p.add_argument("--scaler", choices=("kubernetes", "local"), default="kubernetes",
                   help="patch Deployments, or start/stop processes on this machine")
    p.add_argument("--tick-s", type=float, default=None,
                   help="seconds between ticks (default: the file's tick_s, else 1.0)")
    p.add_argument("--namespace", default=None,
                   help="namespace of nodes that name none (default: the file's, else default)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics on this port (0 picks one; default: off)")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"),
                   help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--in-cluster", action="store_true",
                   help="use the pod's service account instead of a kubeconfig")
    p.add_argument("--models-dir", default=env("DFLEET_MODELS_DIR", "models"),
                   help="--scaler local: models folder handed to each service")
    p.add_argument("--log-dir", default=None,
                   help="--scaler local: one log file per started process here")
    p.add_argument("--max-ticks", type=int, default=None,
                   help="stop after this many ticks (experiments, tests)")
    p.add_argument("--check", action="store_true",
                   help="validate the config, print it as JSON, and exit")
    p.add_argument("--log-level", default=env("DFLEET_LOG_LEVEL", "INFO"),
                   help="logging level (env DFLEET_LOG_LEVEL)")
    return p


def _scaler(args: argparse.Namespace) -> Any:
    if args.scaler == "local":
        from controller.local_scaler import LocalScaler
        return LocalScaler(args.models_dir, args.redis_url, log_dir=args.log_dir)
    from controller.kubernetes_scaler import KubernetesScaler
    return KubernetesScaler.connect(kubeconfig=args.kubeconfig, in_cluster=args.in_cluster,
                                    context=args.context)


def _describe(settings: ControllerSettings) -> dict[str, Any]:
    from dataclasses import asdict
    return asdict(settings)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        settings = load_config(args.config, tick_s=args.tick_s, namespace=args.namespace)
    except ConfigError as exc:
        print(f"dfleet controller: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(_describe(settings), indent=2))
        return 0
    log.info(json.dumps({"event": "settings", "scaler": args.scaler,
                         "redis_url": mask_url_password(args.redis_url),
                         **_describe(settings)}))
    scaler: Scaler = _scaler(args)
    metrics = ControllerMetrics()
    if args.metrics_port is not None:
        port = metrics.serve(args.metrics_port)
        log.info(json.dumps({"event": "metrics", "port": port}))
    controller = Controller(settings, QueueDepthSource.from_url(args.redis_url), scaler, metrics)

    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    loop = threading.Thread(target=controller.run, kwargs={"max_ticks": args.max_ticks},
                            name="controller")
    loop.start()
    try:
        # No work inside a signal handler (it may interrupt code holding a lock).
        signum = wait_for_stop_signal(done=lambda: not loop.is_alive())
        if signum is not None:
            log.info(json.dumps({"event": "stopping", "signal": signum}))
            controller.stop(timeout_s=0)
        loop.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        close = getattr(scaler, "close", None)
        if close is not None:
            close()
        metrics.close()
    return 0
