"""python -m services.controlnet"""

from __future__ import annotations

import grpc

from diffusion.v1 import controlnet_pb2_grpc
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, parse_settings
from services.controlnet.engine import ControlNetEngine
from services.controlnet.servicer import ControlNetServicer

ROLE = "controlnet"


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(ServiceSettings, ROLE, argv)
    init_process(settings, ROLE)
    engine = ControlNetEngine(ModelStore(settings.models_dir))

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        controlnet_pb2_grpc.add_ControlNetServicer_to_server(
            ControlNetServicer(engine, runtime), server)
        return ["diffusion.v1.ControlNet"]

    serve(ROLE, settings, add, Heartbeat(models=engine.models.names))


if __name__ == "__main__":
    main()
