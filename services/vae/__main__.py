"""python -m services.vae"""

from __future__ import annotations

import grpc

from diffusion.v1 import vae_pb2_grpc
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, parse_settings
from services.vae.engine import VaeEngine
from services.vae.servicer import VaeServicer

ROLE = "vae"


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(ServiceSettings, ROLE, argv)
    init_process(settings, ROLE)
    engine = VaeEngine(ModelStore(settings.models_dir))

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        vae_pb2_grpc.add_VaeServicer_to_server(VaeServicer(engine, runtime), server)
        return ["diffusion.v1.Vae"]

    serve(ROLE, settings, add, Heartbeat(models=engine.models.names))


if __name__ == "__main__":
    main()
