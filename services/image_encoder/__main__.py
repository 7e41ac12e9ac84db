"""python -m services.image_encoder"""

from __future__ import annotations

import grpc

from diffusion.v1 import image_encoder_pb2_grpc
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, parse_settings
from services.image_encoder.engine import ImageEncoderEngine
from services.image_encoder.servicer import ImageEncoderServicer

ROLE = "image_encoder"


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(ServiceSettings, ROLE, argv)
    init_process(settings, ROLE)
    engine = ImageEncoderEngine(ModelStore(settings.models_dir))

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        image_encoder_pb2_grpc.add_ImageEncoderServicer_to_server(
            ImageEncoderServicer(engine, runtime), server)
        return ["diffusion.v1.ImageEncoder"]

    serve(ROLE, settings, add, Heartbeat(models=engine.models.names))


if __name__ == "__main__":
    main()
