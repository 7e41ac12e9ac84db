"""VAE encode/decode with the arithmetic of the Stable Diffusion and Flux pipelines.

Encoding returns the encoder's moments; the denoiser samples them with the request's
generators and applies ``(sample - shift_factor) * scaling_factor``. Decoding undoes that:
``latents / scaling_factor + shift_factor`` (a VAE with no shift factor, as SD's, adds none).

Loads and passes run on the engine's :class:`~services.common.compute.ComputeThread`.
"""

from __future__ import annotations

import torch

from services.common.compute import ComputeThread
from services.common.errors import InvalidArgument
from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore


class VaeEngine:
    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.models: LoadedModels = LoadedModels(store.load_vae)
        self.compute = ComputeThread("vae-compute")

    def encode(self, model: str, image: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] -> the encoder's moments ``[B, 2C, H/8, W/8]``."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise InvalidArgument(f"image must be [B, 3, H, W], got {list(image.shape)}",
                                  field="image")
        return self.compute.run(self._encode, model, image)

    def _encode(self, model: str, image: torch.Tensor) -> torch.Tensor:
        vae = self.models.get(model)
        with torch.inference_mode():
            return vae.encode(image.to(vae.dtype)).latent_dist.parameters.clone()

    def decode(self, model: str, latents: torch.Tensor) -> torch.Tensor:
        """Final latents ``[B, C, h, w]`` -> images ``[B, 3, 8h, 8w]`` in [-1, 1]."""
        if latents.dim() != 4:
            raise InvalidArgument(f"latents must be [B, C, h, w], got {list(latents.shape)}",
                                  field="latents")
        return self.compute.run(self._decode, model, latents)

    def _decode(self, model: str, latents: torch.Tensor) -> torch.Tensor:
        vae = self.models.get(model)
        with torch.inference_mode():
            scaled = latents.to(vae.dtype) / vae.config.scaling_factor
            shift = getattr(vae.config, "shift_factor", None)
            if shift is not None:
                scaled = scaled + shift
            return vae.decode(scaled, return_dict=False)[0].clone()
