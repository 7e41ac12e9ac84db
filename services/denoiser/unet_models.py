"""Loading UNets for the step loop: weights, pipeline facts, LoRA patcher, split forward."""

from __future__ import annotations

import torch

from services.common.errors import FailedPrecondition
from services.common.loaded_models import LoadedModels
from services.common.lora_merge import LoraPatcher
from services.common.model_store import ModelStore
from services.denoiser.cuda_graphs import GraphedHalves
from services.denoiser.request_state import ModelInfo
from services.denoiser.step_batch import Halves, LoadedUnet
from services.denoiser.unet_halves import UnetHalves, check_supported


def load_unet(store: ModelStore, name: str, device: str = "cpu",
              dtype: torch.dtype = torch.float32, cuda_graphs: bool = False) -> LoadedUnet:
    unet = store.load_denoiser(name, dtype=dtype).to(device)
    try:
        check_supported(unet)
    except ValueError as exc:
        raise FailedPrecondition(f"{name}: {exc}", field="model") from exc
    info = ModelInfo(scheduler_config=store.scheduler_config(name),
                     vae_scaling_factor=store.vae_scaling_factor(name),
                     vae_scale_factor=store.vae_scale_factor(name),
                     in_channels=unet.config.in_channels, device=device, dtype=dtype,
                     family=store.family(name))
    halves: Halves = UnetHalves(unet)
    if cuda_graphs and torch.device(device).type == "cuda":
        halves = GraphedHalves(UnetHalves(unet))
    return LoadedUnet(unet, info, LoraPatcher(unet), halves)


def unet_loader(store: ModelStore, device: str = "cpu", dtype: torch.dtype = torch.float32,
                cuda_graphs: bool = False) -> LoadedModels[LoadedUnet]:
    return LoadedModels(lambda name: load_unet(store, name, device, dtype, cuda_graphs))
