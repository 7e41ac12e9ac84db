"""Settings of the HTTP front."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import ServiceSettings, setting


@dataclass
class HttpFrontSettings(ServiceSettings):
    """HTTP front: JSON and server-sent events over HTTP, calling a gateway by gRPC."""

    port: int = setting("HTTP port to bind; 0 picks a free one", default=8000)
    gateway: str = setting("gateway address host:port; empty = a live gateway from Redis",
                           default="")
    request_timeout_s: float = setting("deadline of each call to the gateway, seconds; "
                                       "0 = none", default=600.0)

    def validate(self) -> None:
        super().validate()
        if not self.gateway and not self.redis_url:
            raise ValueError("gateway or redis_url is required: the front needs a gateway")
        if self.request_timeout_s < 0:
            raise ValueError(f"request_timeout_s={self.request_timeout_s} must be >= 0")
