"""Computes ControlNet residuals, exactly as the ControlNet pipelines call the model."""

from __future__ import annotations

import torch

from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore

Residuals = tuple[list[torch.Tensor], torch.Tensor]


class ControlNetEngine:
    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.models: LoadedModels = LoadedModels(store.load_controlnet)

    def check(self, name: str) -> None:
        self.store.get(name, ("controlnet",), field="controlnet")
        self.models.get(name)

    def step(self, name: str, latents: torch.Tensor, timestep: torch.Tensor,
             prompt_embeds: torch.Tensor, cond_image: torch.Tensor, scale: float) -> Residuals:
        controlnet = self.models.get(name)
        with torch.inference_mode():
            down, mid = controlnet(latents, timestep, encoder_hidden_states=prompt_embeds,
                                   controlnet_cond=cond_image, conditioning_scale=scale,
                                   guess_mode=False, return_dict=False)
        return [d.clone() for d in down], mid.clone()

    def zeros(self, name: str, latents: torch.Tensor, timestep: torch.Tensor,
              prompt_embeds: torch.Tensor, cond_image: torch.Tensor) -> Residuals:
        """What a conditioning scale of 0 gives, without running the model twice per shape."""
        down, mid = self.step(name, latents, timestep, prompt_embeds, cond_image, 0.0)
        return [torch.zeros_like(d) for d in down], torch.zeros_like(mid)
