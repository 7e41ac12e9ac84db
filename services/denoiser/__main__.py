"""python -m services.denoiser"""

from __future__ import annotations

from pathlib import Path

import grpc
import torch

from diffusion.v1 import denoiser_pb2_grpc
from services.common.errors import FailedPrecondition
from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import parse_settings
from services.denoiser.bal import BalProfiles
from services.denoiser.cuda_graphs import GraphedHalves
from services.denoiser.engine import DenoiserEngine
from services.denoiser.lora_loader import LoraDeviceCache, LoraLoader, service_fetch
from services.denoiser.lora_patch import LoraPatcher
from services.denoiser.request_state import ModelInfo
from services.denoiser.servicer import DenoiserServicer
from services.denoiser.settings import DenoiserSettings
from services.denoiser.step_batch import Halves, LoadedUnet
from services.denoiser.unet_halves import UnetHalves, check_supported

ROLE = "denoiser"


def unet_loader(store: ModelStore, device: str = "cpu", dtype: torch.dtype = torch.float32,
                cuda_graphs: bool = False) -> LoadedModels[LoadedUnet]:
    def load(name: str) -> LoadedUnet:
        unet = store.load_unet(name, dtype=dtype).to(device)
        try:
            check_supported(unet)
        except ValueError as exc:
            raise FailedPrecondition(f"{name}: {exc}", field="model") from exc
        vae_blocks = len(store.vae_block_channels(name))
        info = ModelInfo(scheduler_config=store.scheduler_config(name),
                         vae_scaling_factor=store.vae_scaling_factor(name),
                         vae_scale_factor=2 ** (vae_blocks - 1),
                         in_channels=unet.config.in_channels, device=device, dtype=dtype)
        halves: Halves = UnetHalves(unet)
        if cuda_graphs and torch.device(device).type == "cuda":
            halves = GraphedHalves(UnetHalves(unet))
        return LoadedUnet(unet, info, LoraPatcher(unet), halves)
    return LoadedModels(load)


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(DenoiserSettings, ROLE, argv)
    init_process(settings, ROLE)
    store = ModelStore(settings.models_dir)
    unets = unet_loader(store, settings.device, settings.torch_dtype, settings.cuda_graphs)

    def load(name: str) -> LoadedUnet:
        store.pipeline(name)
        return unets.get(name)

    engine = DenoiserEngine(load, settings.max_batch_requests, settings.parallel_controlnet)
    profiles = BalProfiles(settings.profiles_dir or Path(settings.models_dir) / "profiles")
    cache = LoraDeviceCache(settings.lora_device_budget_mb << 20)

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        loader = LoraLoader(service_fetch(runtime.channels, runtime.importer), cache,
                            settings.device, settings.lora_load_threads)
        denoiser_pb2_grpc.add_DenoiserServicer_to_server(
            DenoiserServicer(engine, runtime, loader, profiles), server)
        return ["diffusion.v1.Denoiser"]

    serve(ROLE, settings, add, Heartbeat(models=unets.names, loras=cache.names, load=engine.load))
    engine.stop()


if __name__ == "__main__":
    main()
