"""Starts one service process: gRPC server, health, tensor leases, heartbeats, shutdown.

Every role's ``__main__`` parses its settings, builds its engine and servicers,
and hands them to :func:`serve`; nothing here knows about a particular role.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import prometheus_client
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection

from dfleet.tracing import shutdown_tracing
from diffusion.v1 import tensor_pb2, tensor_pb2_grpc
from services.common.channels import CHANNEL_OPTIONS, ChannelPool
from services.common.errors import ErrorInterceptor
from services.common.fleet_state import FleetState, ReplicaInfo
from services.common.parent_watch import watch_parent
from services.common.peers import PeerRegistry
from services.common.settings import ServiceSettings, configure_logging
from services.common.stop_signals import wait_for_stop_signal
from services.common.telemetry.rpc import ServerTelemetry
from services.common.telemetry.tracing import configure_tracing, instrument_redis
from services.common.tls import TlsFiles
from services.common.transport import TensorExporter, TensorImporter, TensorLeasesServicer, host_id

log = logging.getLogger("dfleet.server")


@dataclass
class ServiceRuntime:
    """What a role's servicers share with the process around them."""

    role: str
    settings: ServiceSettings
    address: str
    exporter: TensorExporter
    importer: TensorImporter
    fleet: FleetState | None
    channels: ChannelPool = field(default_factory=ChannelPool)
    stopping: threading.Event = field(default_factory=threading.Event)
    metrics_port: int | None = None
    """Where GET /metrics answers (None: off); heartbeats carry it for scrapers and tests."""
    peers: PeerRegistry = field(default_factory=lambda: PeerRegistry(None))
    """Checks the peer addresses a caller names against the fleet's registry."""


@dataclass
class Heartbeat:
    """What a role reports in each heartbeat besides its address."""

    models: Callable[[], list[str]] = list
    loras: Callable[[], list[str]] = list
    load: Callable[[], int] = lambda: 0
    extra: Callable[[], dict[str, str]] = dict
    """Role-specific figures for the scheduler, e.g. the denoiser's ``step_ms``."""


def init_process(settings: ServiceSettings, role: str) -> None:
    configure_logging(settings.log_level)
    configure_tracing(role)
    watch_parent()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    torch.set_grad_enabled(False)
    log.info("starting %s", role, extra={"role": role, "replica_id": settings.replica_id})
    log.info("settings %s", settings.as_log_dict(), extra={"role": role})


def _heartbeat_loop(runtime: ServiceRuntime, beat: Heartbeat) -> None:
    settings = runtime.settings
    while not runtime.stopping.wait(settings.heartbeat_s):
        runtime.exporter.reclaim_expired()
        if runtime.fleet is None:
            continue
        try:
            runtime.fleet.heartbeat(_replica_info(runtime, beat))
        except Exception:  # noqa: BLE001 - Redis may be briefly away; next beat retries
            log.warning("heartbeat failed", exc_info=True, extra={"role": runtime.role})


def _replica_info(runtime: ServiceRuntime, beat: Heartbeat) -> ReplicaInfo:
    extra = beat.extra()
    if runtime.metrics_port is not None:
        extra = {**extra, "metrics_port": str(runtime.metrics_port)}
    return ReplicaInfo(
        replica_id=runtime.settings.replica_id, role=runtime.role, address=runtime.address,
        host_id=host_id(), models=tuple(beat.models()), loras=tuple(beat.loras()),
        load=beat.load(), extra=extra)


def start_metrics(settings: ServiceSettings, role: str) -> int | None:
    """Serves the process's Prometheus registry on ``metrics_port``; the bound port or None."""
    if settings.metrics_port < 0:
        return None
    http_server, _thread = prometheus_client.start_http_server(settings.metrics_port,
                                                              addr=settings.host)
    port = int(http_server.server_port)
    log.info("metrics on %s:%d/metrics", settings.host, port, extra={"role": role})
    return port


def serve(role: str, settings: ServiceSettings,
          add_servicers: Callable[[grpc.Server, ServiceRuntime], list[str]],
          heartbeat: Heartbeat | None = None, max_workers: int = 64,
          reflection: bool = False, max_receive_bytes: int = 0,
          interceptors: tuple[grpc.ServerInterceptor, ...] = (),
          require_client_cert: bool = True) -> None:
    """Serves until SIGTERM/SIGINT; ``add_servicers`` returns the service names for health.

    ``reflection`` serves gRPC server reflection, so clients without the proto files
    (grpcurl, grpcui, Postman) can list, describe and call every service here.
    ``max_receive_bytes`` > 0: the largest message this port accepts, when it is lower than
    the internal limit (a public port). With TLS settings the port serves TLS and, when
    ``require_client_cert``, only callers holding a certificate of the fleet's CA.
    """
    tls = TlsFiles.from_settings(settings)
    options = [(key, max_receive_bytes if key == "grpc.max_receive_message_length"
                and max_receive_bytes else value) for key, value in CHANNEL_OPTIONS]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         interceptors=[ServerTelemetry(role), *interceptors, ErrorInterceptor()],
                         options=options)
    bind = f"{settings.host}:{settings.port}"
    port = (server.add_secure_port(bind, tls.server_credentials(require_client_cert))
            if tls is not None else server.add_insecure_port(bind))
    advertise = settings.advertise_host or settings.host
    if advertise in ("0.0.0.0", "::", "[::]"):
        advertise = socket.gethostname()
    address = f"{advertise}:{port}"
    exporter = TensorExporter(address, default_ttl_s=settings.lease_ttl_s,
                              inline_max_bytes=settings.inline_max_bytes, role=role)
    fleet = FleetState.from_url(settings.redis_url) if settings.redis_url else None
    if fleet is not None:
        instrument_redis(fleet.redis)
    channels = ChannelPool(tls)
    runtime = ServiceRuntime(role, settings, address, exporter,
                             TensorImporter(open_channel=channels.get), fleet, channels,
                             metrics_port=start_metrics(settings, role),
                             peers=PeerRegistry(fleet))
    if fleet is not None:
        fleet.reachable = runtime.channels.reachable   # a failed peer leaves placement at once
    names = add_servicers(server, runtime)
    tensor_pb2_grpc.add_TensorLeasesServicer_to_server(TensorLeasesServicer(exporter), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection:
        served = [*names, tensor_pb2.DESCRIPTOR.services_by_name["TensorLeases"].full_name,
                  health.SERVICE_NAME, grpc_reflection.SERVICE_NAME]
        grpc_reflection.enable_server_reflection(served, server)
    server.start()
    for name in ["", *names]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    beat = heartbeat or Heartbeat()
    if fleet is not None:
        try:
            fleet.heartbeat(_replica_info(runtime, beat))
        except Exception:  # noqa: BLE001
            log.warning("first heartbeat failed", exc_info=True)
    threading.Thread(target=_heartbeat_loop, args=(runtime, beat), daemon=True,
                     name="heartbeat").start()
    if settings.port_file:
        with open(settings.port_file, "w") as f:
            f.write(str(port))
    log.info("serving %s on %s", role, address, extra={"role": role})

    signum = wait_for_stop_signal()   # no work inside a signal handler: it may hold a lock
    log.info("signal %d: stopping", signum, extra={"role": role})
    runtime.stopping.set()
    health_servicer.enter_graceful_shutdown()
    if fleet is not None:
        try:
            fleet.deregister(role, settings.replica_id)
        except Exception:  # noqa: BLE001
            log.warning("deregister failed", exc_info=True)
    server.stop(grace=3).wait()
    runtime.importer.close()
    runtime.channels.close()
    exporter.close()
    shutdown_tracing()
    log.info("stopped", extra={"role": role})
