"""python -m services.denoiser"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from diffusion.v1 import denoiser_pb2_grpc
from services.common.errors import FailedPrecondition
from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, parse_settings, setting
from services.denoiser.engine import DenoiserEngine, LoadedUnet
from services.denoiser.lora_patch import LoraPatcher
from services.denoiser.request_state import ModelInfo
from services.denoiser.servicer import DenoiserServicer

ROLE = "denoiser"


@dataclass
class DenoiserSettings(ServiceSettings):
    """Denoiser: runs the step loop of its requests in one shared batch."""

    max_batch_requests: int = setting("requests per UNet batch", default=8)

    def validate(self) -> None:
        super().validate()
        if self.max_batch_requests < 1:
            raise ValueError(f"max_batch_requests={self.max_batch_requests} must be >= 1")


def unet_loader(store: ModelStore) -> LoadedModels[LoadedUnet]:
    def load(name: str) -> LoadedUnet:
        unet = store.load_unet(name)
        if unet.config.time_cond_proj_dim is not None:
            raise FailedPrecondition(f"{name}: guidance-embedding UNets are not supported",
                                     field="model")
        vae_blocks = len(store.vae_block_channels(name))
        info = ModelInfo(scheduler_config=store.scheduler_config(name),
                         vae_scaling_factor=store.vae_scaling_factor(name),
                         vae_scale_factor=2 ** (vae_blocks - 1),
                         in_channels=unet.config.in_channels)
        return LoadedUnet(unet, info, LoraPatcher(unet))
    return LoadedModels(load)


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(DenoiserSettings, ROLE, argv)
    init_process(settings, ROLE)
    store = ModelStore(settings.models_dir)
    unets = unet_loader(store)

    def load(name: str) -> LoadedUnet:
        store.pipeline(name)
        return unets.get(name)

    engine = DenoiserEngine(load, settings.max_batch_requests)

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        denoiser_pb2_grpc.add_DenoiserServicer_to_server(DenoiserServicer(engine, runtime), server)
        return ["diffusion.v1.Denoiser"]

    serve(ROLE, settings, add, Heartbeat(models=unets.names, load=engine.load))
    engine.stop()


if __name__ == "__main__":
    main()
