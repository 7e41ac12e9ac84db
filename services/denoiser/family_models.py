"""Which loaded model the step loop runs for each family's denoiser.

A UNet family (SD1.5, SDXL) loads as :class:`~services.denoiser.step_batch.LoadedUnet` (its
forward split for ControlNets beside it), Flux as
:class:`~services.denoiser.flux_models.LoadedFlux`. Each gives the step loop the same
interface (:class:`~services.denoiser.step_batch.LoadedModel`): facts, LoRA patcher, a
``prepare`` that makes a request's sampler and a forward of a batch. A new family with its
own denoiser adds one entry here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore
from services.denoiser.flux_models import load_flux
from services.denoiser.step_batch import LoadedModel
from services.denoiser.unet_models import load_unet

Loader = Callable[[ModelStore, str, str, torch.dtype, bool], LoadedModel]

LOADERS: dict[str, Loader] = {
    "sd15": load_unet,
    "sdxl": load_unet,
    "flux": lambda store, name, device, dtype, _graphs: load_flux(store, name, device, dtype),
}


def denoiser_loader(store: ModelStore, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    cuda_graphs: bool = False) -> LoadedModels[LoadedModel]:
    """Each model's denoiser, loaded on first use by its family's loader (CUDA graphs: UNets
    only)."""
    def load(name: str) -> LoadedModel:
        return LOADERS[store.family(name).name](store, name, device, dtype, cuda_graphs)
    return LoadedModels(load)
