"""python -m services.lora_cache"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from diffusion.v1 import lora_cache_pb2_grpc
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, parse_settings, setting
from services.lora_cache.engine import LoraCacheEngine
from services.lora_cache.servicer import LoraCacheServicer

ROLE = "lora_cache"


@dataclass
class LoraCacheSettings(ServiceSettings):
    """LoRA cache: host-memory LRU of LoRA weights for the denoisers of one node."""

    host_budget_mb: int = setting("host memory for cached LoRAs, MiB", default=2048)
    fetch_pin_s: float = setting("seconds a fetched LoRA's segment outlives its eviction",
                                 default=30.0)

    def validate(self) -> None:
        super().validate()
        if self.host_budget_mb <= 0:
            raise ValueError(f"host_budget_mb={self.host_budget_mb} must be positive")
        if self.fetch_pin_s <= 0:
            raise ValueError(f"fetch_pin_s={self.fetch_pin_s} must be positive")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(LoraCacheSettings, ROLE, argv)
    init_process(settings, ROLE)
    store = ModelStore(settings.models_dir)
    store.loras.fits()   # LoRA files are matched now: a refused one is logged at start
    engine = LoraCacheEngine(store, settings.host_budget_mb << 20, settings.fetch_pin_s)

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        lora_cache_pb2_grpc.add_LoraCacheServicer_to_server(
            LoraCacheServicer(engine, runtime), server)
        return ["diffusion.v1.LoraCache"]

    try:
        serve(ROLE, settings, add, Heartbeat(loras=engine.names))
    finally:
        engine.close()


if __name__ == "__main__":
    main()
