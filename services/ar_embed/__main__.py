"""python -m services.ar_embed"""

from __future__ import annotations

import grpc

from diffusion.v1 import ar_embed_pb2_grpc
from services.ar_embed.engine import ArEmbedEngine
from services.ar_embed.servicer import ArEmbedServicer
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, parse_settings

ROLE = "ar_embed"


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(ServiceSettings, ROLE, argv)
    init_process(settings, ROLE)
    engine = ArEmbedEngine(ModelStore(settings.models_dir))

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        ar_embed_pb2_grpc.add_ArEmbedServicer_to_server(ArEmbedServicer(engine, runtime), server)
        return ["diffusion.v1.ArEmbed"]

    serve(ROLE, settings, add, Heartbeat(models=engine.names, load=engine.load))


if __name__ == "__main__":
    main()
