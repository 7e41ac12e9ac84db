"""Computes ControlNet residuals, exactly as the ControlNet pipelines call the model.

The models come from a :class:`~services.controlnet.cache.ControlNetCache`;
a stream holds its ControlNet from :meth:`ControlNetEngine.acquire` to
:meth:`ControlNetEngine.release`. On a CUDA device a UNet ControlNet can run as
CUDA graphs (residuals captured at scale 1 and scaled afterwards; Flux
ControlNets run eagerly). Loads and steps run on the engine's
:class:`~services.common.compute.ComputeThread`. Residuals are two lists
(:mod:`services.common.controlnet_calls`): a UNet ControlNet's down and [mid],
a Flux ControlNet's joint and single blocks'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from services.common.compute import ComputeThread
from services.common.controlnet_calls import Residuals, check_compatible, is_flux, residuals
from services.common.model_store import ModelStore
from services.controlnet.cache import ControlNetCache
from services.controlnet.cuda_graph import GraphedControlNet

Tensors = dict[str, torch.Tensor]


@dataclass
class ResidentControlNet:
    """A loaded ControlNet on its device, with its graphs when enabled (UNet ControlNets)."""

    name: str
    model: Any
    graphed: GraphedControlNet | None = None

    def check_compatible(self, prompt_embeds: torch.Tensor, latents: torch.Tensor | None = None
                         ) -> None:
        """Raises FAILED_PRECONDITION when the base model's tensors do not fit this ControlNet."""
        check_compatible(self.name, self.model, prompt_embeds, latents)


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
        graphs = self.cuda_graphs and not is_flux(model)
        return ResidentControlNet(name, model, GraphedControlNet(model) if graphs else None)

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
             scale: float, added_cond: Tensors | None = None, shared: Tensors | None = None
             ) -> Residuals:
        return self.compute.run(self._step, controlnet, latents, timestep, prompt_embeds,
                                cond_image, scale, added_cond, shared)

    def _step(self, controlnet: ResidentControlNet, latents: torch.Tensor,
              timestep: torch.Tensor, prompt_embeds: torch.Tensor, cond_image: torch.Tensor,
              scale: float, added_cond: Tensors | None = None, shared: Tensors | None = None
              ) -> Residuals:
        def here(tensors: Tensors | None) -> Tensors | None:
            return None if tensors is None else {k: v.to(self.device, self.dtype)
                                                 for k, v in tensors.items()}
        latents = latents.to(self.device, self.dtype)
        prompt_embeds = prompt_embeds.to(self.device, self.dtype)
        cond_image = cond_image.to(self.device, self.dtype)
        timestep = timestep.to(self.device)
        with torch.inference_mode():
            if controlnet.graphed is not None:
                down, mid = controlnet.graphed(latents, timestep, prompt_embeds, cond_image,
                                               added_cond)
                return [d * scale for d in down], [mid * scale]
            first, second = residuals(controlnet.model, latents, timestep, prompt_embeds,
                                      cond_image, scale, here(added_cond), here(shared))
        return [t.clone() for t in first], [t.clone() for t in second]

    def zeros(self, controlnet: ResidentControlNet, latents: torch.Tensor,
              timestep: torch.Tensor, prompt_embeds: torch.Tensor, cond_image: torch.Tensor,
              added_cond: Tensors | None = None, shared: Tensors | None = None) -> Residuals:
        """What a conditioning scale of 0 gives, without running the model twice per shape."""
        return self.compute.run(self._zeros, controlnet, latents, timestep, prompt_embeds,
                                cond_image, added_cond, shared)

    def _zeros(self, controlnet: ResidentControlNet, latents: torch.Tensor,
               timestep: torch.Tensor, prompt_embeds: torch.Tensor, cond_image: torch.Tensor,
               added_cond: Tensors | None = None, shared: Tensors | None = None) -> Residuals:
        first, second = self._step(controlnet, latents, timestep, prompt_embeds, cond_image,
                                   0.0, added_cond, shared)
        return [torch.zeros_like(t) for t in first], [torch.zeros_like(t) for t in second]
