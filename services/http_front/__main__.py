"""python -m services.http_front: the HTTP/JSON front (uvicorn) beside a gateway."""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

import dfleet
from dfleet.errors import Unavailable
from dfleet.tracing import shutdown_tracing
from services.common.fleet_state import FleetState
from services.common.parent_watch import watch_parent
from services.common.settings import configure_logging, parse_settings
from services.common.telemetry.tracing import configure_tracing
from services.http_front.app import build_app
from services.http_front.settings import HttpFrontSettings

ROLE = "http_front"
log = logging.getLogger("dfleet.http_front")


class GatewayClients:
    """The SDK client of the configured gateway, or of a live one found in Redis."""

    def __init__(self, settings: HttpFrontSettings) -> None:
        self.settings = settings
        self.fleet = FleetState.from_url(settings.redis_url) if settings.redis_url else None
        self._clients: dict[str, dfleet.Client] = {}
        self._lock = threading.Lock()

    def _address(self) -> str:
        if self.settings.gateway:
            return self.settings.gateway
        assert self.fleet is not None
        live = self.fleet.replicas("gateway")
        if not live:
            raise Unavailable(message="no live gateway in the fleet")
        return min(live, key=lambda r: r.load).address

    def __call__(self) -> dfleet.Client:
        address = self._address()
        with self._lock:
            client = self._clients.get(address)
            if client is None:
                timeout = self.settings.request_timeout_s or None
                client = self._clients[address] = dfleet.Client(address, timeout=timeout)
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(HttpFrontSettings, ROLE, argv)
    configure_logging(settings.log_level)
    configure_tracing(ROLE)
    watch_parent()
    log.info("settings %s", settings.as_log_dict(), extra={"role": ROLE})
    clients = GatewayClients(settings)
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]
    if settings.port_file:
        with open(settings.port_file, "w") as f:
            f.write(str(port))
    log.info("serving HTTP on %s:%d", settings.host, port, extra={"role": ROLE})
    fleet = clients.fleet
    depth = (lambda node: fleet.depths().get(node, 0)) if fleet is not None else None
    server = uvicorn.Server(uvicorn.Config(build_app(clients, depth), log_config=None,
                                           access_log=False, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        clients.close()
        shutdown_tracing()


if __name__ == "__main__":
    main()
