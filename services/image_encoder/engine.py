"""Image embeddings for IP-Adapters, computed as the pipelines compute them.

Each IP-Adapter is published with its image encoder (a CLIP vision model with projection).
The image is preprocessed by a ``CLIPImageProcessor`` at the encoder's image size (what the
pipelines build when the model folder has no feature extractor of its own) and encoded; the
adapter's projection takes the encoder's ``image_embeds``. Loads and passes run on the engine's
:class:`~services.common.compute.ComputeThread`.
"""

from __future__ import annotations

from typing import Any

import PIL.Image
import torch
from transformers import CLIPImageProcessor

from services.common.compute import ComputeThread
from services.common.images import decode
from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore

MAX_IMAGE_BYTES = 32 << 20


class ImageEncoderEngine:
    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.models: LoadedModels[tuple[Any, Any]] = LoadedModels(self._load)
        self.compute = ComputeThread("image-encoder-compute")

    def _load(self, name: str) -> tuple[Any, Any]:
        encoder = self.store.load_image_encoder(name)
        size = encoder.config.image_size
        return CLIPImageProcessor(size=size, crop_size=size), encoder

    def encode(self, ip_adapter: str, data: bytes) -> torch.Tensor:
        """``[1, D]`` image embeddings of an encoded image, by ``ip_adapter``'s encoder."""
        self.store.get(ip_adapter, ("ip_adapter",), field="ip_adapter")
        image = decode(data, "image", MAX_IMAGE_BYTES)
        return self.compute.run(self._encode, ip_adapter, image)

    def _encode(self, ip_adapter: str, image: PIL.Image.Image) -> torch.Tensor:
        processor, encoder = self.models.get(ip_adapter)
        pixels = processor(image, return_tensors="pt").pixel_values
        with torch.inference_mode():
            return encoder(pixels.to(encoder.dtype)).image_embeds.clone()

