"""python -m services.lora_cache"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from diffusion.v1 import lora_cache_pb2_grpc
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, setting, parse_settings
from services.lora_cache.engine import LoraCacheEngine
from services.lora_cache.servicer import LoraCacheServicer

ROLE = "lora_cache"


@dataclass
class LoraCacheSettings(ServiceSettings):
    """LoRA cache: host-memory LRU of LoRA weights for the denoisers of one node."""

    host_budget_mb: int = setting("host memory for cached LoRAs, MiB", default=2048)

    def validate(self) -> None:
        super().validate()
        if self.host_budget_mb <= 0:
            raise ValueError(f"host_budget_mb={self.host_budget_mb} must be positive")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(LoraCacheSettings, ROLE, argv)
    init_process(settings, ROLE)
    engine = LoraCacheEngine(ModelStore(settings.models_dir), settings.host_budget_mb << 20)

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        lora_cache_pb2_grpc.add_LoraCacheServicer_to_server(
            LoraCacheServicer(engine, runtime), server)
        return ["diffusion.v1.LoraCache"]

    serve(ROLE, settings, add, Heartbeat(loras=engine.names))


if __name__ == "__main__":
    main()
