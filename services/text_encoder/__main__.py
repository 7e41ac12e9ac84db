"""python -m services.text_encoder"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import grpc

from diffusion.v1 import text_encoder_pb2_grpc
from services.common.lora_fetch import fetch_layers
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, parse_settings, setting
from services.text_encoder.engine import TextEncoderEngine
from services.text_encoder.loras import TextLoraLayers
from services.text_encoder.servicer import TextEncoderServicer

ROLE = "text_encoder"


@dataclass
class TextEncoderSettings(ServiceSettings):
    """Text encoder: tokenizes and encodes prompts, with LoRAs' text-encoder layers merged."""

    lora_budget_mb: int = setting("memory for cached LoRA text-encoder layers, MiB",
                                  default=256)

    def validate(self) -> None:
        super().validate()
        if self.lora_budget_mb <= 0:
            raise ValueError(f"lora_budget_mb={self.lora_budget_mb} must be positive")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(TextEncoderSettings, ROLE, argv)
    init_process(settings, ROLE)
    engine = TextEncoderEngine(ModelStore(settings.models_dir))

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        fetch = functools.partial(fetch_layers, runtime.channels, runtime.importer)
        loras = TextLoraLayers(fetch, settings.lora_budget_mb << 20)
        text_encoder_pb2_grpc.add_TextEncoderServicer_to_server(
            TextEncoderServicer(engine, runtime, loras), server)
        return ["diffusion.v1.TextEncoder"]

    serve(ROLE, settings, add, Heartbeat(models=engine.models.names))


if __name__ == "__main__":
    main()
