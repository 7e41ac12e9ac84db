"""python -m services.text_encoder"""

from __future__ import annotations

import grpc

from diffusion.v1 import text_encoder_pb2_grpc
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, parse_settings
from services.text_encoder.engine import TextEncoderEngine
from services.text_encoder.servicer import TextEncoderServicer

ROLE = "text_encoder"


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(ServiceSettings, ROLE, argv)
    init_process(settings, ROLE)
    engine = TextEncoderEngine(ModelStore(settings.models_dir))

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        text_encoder_pb2_grpc.add_TextEncoderServicer_to_server(
            TextEncoderServicer(engine, runtime), server)
        return ["diffusion.v1.TextEncoder"]

    serve(ROLE, settings, add, Heartbeat(models=engine.models.names))


if __name__ == "__main__":
    main()
