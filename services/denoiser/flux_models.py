"""Loading Flux transformers for the step loop: weights, pipeline facts, LoRA patcher, forward.

The forward is the transformer's own, called as the Flux pipelines call it (the timestep in
the latents' dtype over 1000, the distilled guidance scale only when the model embeds it,
the position ids every row shares). A ControlNet's residuals join the transformer after its
first joint block, so they are read before the forward starts: unlike the UNet's, nothing
worth overlapping comes before them (docs/families.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from services.common.loaded_models import LoadedModels
from services.common.lora_merge import LoraPatcher
from services.common.model_store import ModelStore
from services.denoiser.addons.base import BatchInput
from services.denoiser.flux_sampler import FluxState, prepare_flux
from services.denoiser.job import DenoiseJob
from services.denoiser.request_state import ModelInfo


@dataclass
class LoadedFlux:
    transformer: Any
    info: ModelInfo
    patcher: LoraPatcher

    def prepare(self, job: DenoiseJob) -> FluxState:
        return prepare_flux(job, self.info)

    def forward(self, batch: BatchInput) -> torch.Tensor:
        residuals = batch.residuals()
        blocks, singles = residuals if residuals is not None else ([], [])
        added = batch.added_cond or {}
        embeds_guidance = self.transformer.config.guidance_embeds
        noise: torch.Tensor = self.transformer(
            hidden_states=batch.sample, timestep=batch.timesteps.to(batch.sample.dtype) / 1000,
            guidance=added["guidance"] if embeds_guidance else None,
            pooled_projections=added["pooled_projections"], encoder_hidden_states=batch.embeds,
            txt_ids=batch.shared["txt_ids"], img_ids=batch.shared["img_ids"],
            controlnet_block_samples=blocks or None,
            controlnet_single_block_samples=singles or None, return_dict=False)[0]
        return noise


def load_flux(store: ModelStore, name: str, device: str = "cpu",
              dtype: torch.dtype = torch.float32) -> LoadedFlux:
    transformer = store.load_denoiser(name, dtype=dtype).to(device)
    info = ModelInfo(scheduler_config=store.scheduler_config(name),
                     vae_scaling_factor=store.vae_scaling_factor(name),
                     vae_shift_factor=store.vae_shift_factor(name),
                     vae_scale_factor=store.vae_scale_factor(name),
                     in_channels=transformer.config.in_channels,
                     latent_channels=transformer.config.in_channels // 4, device=device,
                     dtype=dtype, family=store.family(name))
    return LoadedFlux(transformer, info, LoraPatcher(transformer))


def flux_loader(store: ModelStore, device: str = "cpu", dtype: torch.dtype = torch.float32
                ) -> LoadedModels[LoadedFlux]:
    return LoadedModels(lambda name: load_flux(store, name, device, dtype))
