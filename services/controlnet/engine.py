"""Computes ControlNet residuals, exactly as the ControlNet pipelines call the model.

The models come from a :class:`~services.controlnet.cache.ControlNetCache`;
a stream holds its ControlNet from :meth:`ControlNetEngine.acquire` to
:meth:`ControlNetEngine.release`. On a CUDA device the model can run as CUDA
graphs (residuals captured at scale 1 and scaled afterwards). Loads and
steps run on the engine's :class:`~services.common.compute.ComputeThread`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from services.common.compute import ComputeThread
from services.common.errors import FailedPrecondition
from services.common.model_store import ModelStore
from services.controlnet.cache import ControlNetCache
from services.controlnet.cuda_graph import GraphedControlNet

Residuals = tuple[list[torch.Tensor], torch.Tensor]


@dataclass
class ResidentControlNet:
    """A loaded ControlNet on its device, with its graphs when enabled."""

    name: str
    model: Any
    graphed: GraphedControlNet | None = None

    def check_compatible(self, prompt_embeds: torch.Tensor, latents: torch.Tensor | None = None
                         ) -> None:
        """Raises FAILED_PRECONDITION when the base model's tensors do not fit this ControlNet."""
        config = self.model.config
        if prompt_embeds.shape[-1] != config.cross_attention_dim:
            raise FailedPrecondition(
                f"ControlNet {self.name!r} takes text embeddings of width "
                f"{config.cross_attention_dim}, the base model gives {prompt_embeds.shape[-1]}",
                field="controlnet")
        if latents is not None and latents.shape[1] != config.in_channels:
            raise FailedPrecondition(
                f"ControlNet {self.name!r} takes {config.in_channels} latent channels, "
                f"the base model gives {latents.shape[1]}", field="controlnet")


class ControlNetEngine:
    def __init__(self, store: ModelStore, budget_bytes: int = 8 << 30, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, cuda_graphs: bool = False) -> None:
        self.store = store
        self.device = torch.device(device)
        self.dtype = dtype
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.compute = ComputeThread("controlnet-compute")
        self.cache = ControlNetCache(lambda name: store.load_controlnet(name, dtype),
                                     budget_bytes, self._place)

    def _place(self, name: str, model: Any) -> ResidentControlNet:
        model = model.to(self.device)
        return ResidentControlNet(name, model, GraphedControlNet(model)
                                  if self.cuda_graphs else None)

    def acquire(self, name: str) -> ResidentControlNet:
        """NOT_FOUND for an unknown name; the model stays resident until :meth:`release`."""
        self.store.get(name, ("controlnet",), field="controlnet")
        resident: ResidentControlNet = self.compute.run(self.cache.acquire, name)
        return resident

    def release(self, name: str) -> None:
        self.cache.release(name)

    def names(self) -> list[str]:
        return self.cache.names()

    def step(self, controlnet: ResidentControlNet, latents: torch.Tensor,
             timestep: torch.Tensor, prompt_embeds: torch.Tensor, cond_image: torch.Tensor,
             scale: float, added_cond: dict[str, torch.Tensor] | None = None) -> Residuals:
        return self.compute.run(self._step, controlnet, latents, timestep, prompt_embeds,
                                cond_image, scale, added_cond)

    def _step(self, controlnet: ResidentControlNet, latents: torch.Tensor,
              timestep: torch.Tensor, prompt_embeds: torch.Tensor, cond_image: torch.Tensor,
              scale: float, added_cond: dict[str, torch.Tensor] | None = None) -> Residuals:
        latents = latents.to(self.device, self.dtype)
        prompt_embeds = prompt_embeds.to(self.device, self.dtype)
        cond_image = cond_image.to(self.device, self.dtype)
        timestep = timestep.to(self.device)
        with torch.inference_mode():
            if controlnet.graphed is not None:
                down, mid = controlnet.graphed(latents, timestep, prompt_embeds, cond_image,
                                               added_cond)
                return [d * scale for d in down], mid * scale
            down, mid = controlnet.model(latents, timestep, encoder_hidden_states=prompt_embeds,
                                         controlnet_cond=cond_image, conditioning_scale=scale,
                                         added_cond_kwargs=added_cond, guess_mode=False,
                                         return_dict=False)
        return [d.clone() for d in down], mid.clone()

    def zeros(self, controlnet: ResidentControlNet, latents: torch.Tensor,
              timestep: torch.Tensor, prompt_embeds: torch.Tensor, cond_image: torch.Tensor,
              added_cond: dict[str, torch.Tensor] | None = None) -> Residuals:
        """What a conditioning scale of 0 gives, without running the model twice per shape."""
        return self.compute.run(self._zeros, controlnet, latents, timestep, prompt_embeds,
                                cond_image, added_cond)

    def _zeros(self, controlnet: ResidentControlNet, latents: torch.Tensor,
               timestep: torch.Tensor, prompt_embeds: torch.Tensor, cond_image: torch.Tensor,
               added_cond: dict[str, torch.Tensor] | None = None) -> Residuals:
        down, mid = self._step(controlnet, latents, timestep, prompt_embeds, cond_image, 0.0,
                               added_cond)
        return [torch.zeros_like(d) for d in down], torch.zeros_like(mid)
