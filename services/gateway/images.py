"""Preparing uploaded images exactly as the SD pipelines do (decoding: services.common.images)."""

from __future__ import annotations

import io
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch
from diffusers.image_processor import VaeImageProcessor

from services.common.errors import InvalidArgument
from services.common.images import decode

if TYPE_CHECKING:
    from services.gateway.generation import Generation

__all__ = ["attach", "control_image", "decode", "init_image", "mask_condition", "to_pixel_list",
           "to_pixels", "to_png"]

@lru_cache(maxsize=8)
def _processors(vae_scale_factor: int) -> tuple[VaeImageProcessor, VaeImageProcessor,
                                                VaeImageProcessor]:
    image = VaeImageProcessor(vae_scale_factor=vae_scale_factor)
    mask = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_normalize=False,
                             do_binarize=True, do_convert_grayscale=True)
    control = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_convert_rgb=True,
                                do_normalize=False)
    return image, mask, control


def init_image(image: PIL.Image.Image, width: int, height: int, vsf: int) -> torch.Tensor:
    """``[1, 3, H, W]`` in [-1, 1], as image-to-image and inpainting preprocess it."""
    processed = _processors(vsf)[0].preprocess(image, height=height, width=width)
    return processed.to(dtype=torch.float32)


def mask_condition(mask: PIL.Image.Image, width: int, height: int, vsf: int) -> torch.Tensor:
    """``[1, 1, H, W]`` binarised, white = repaint."""
    return _processors(vsf)[1].preprocess(mask, height=height, width=width)


def control_image(image: PIL.Image.Image, width: int, height: int, vsf: int) -> torch.Tensor:
    """``[1, 3, H, W]`` in [0, 1], as the ControlNet pipelines preprocess it."""
    processed = _processors(vsf)[2].preprocess(image, height=height, width=width)
    return processed.to(dtype=torch.float32)


def to_pixel_list(decoded: torch.Tensor) -> list[np.ndarray]:
    """VAE output ``[B, 3, H, W]`` in [-1, 1] -> B float32 ``[H, W, 3]`` images in [0, 1]."""
    image = (decoded / 2 + 0.5).clamp(0, 1)
    batch = image.cpu().permute(0, 2, 3, 1).float().numpy()
    return [batch[i] for i in range(batch.shape[0])]


def to_pixels(decoded: torch.Tensor) -> np.ndarray:
    """VAE output ``[1, 3, H, W]`` in [-1, 1] -> float32 ``[H, W, 3]`` in [0, 1]."""
    return to_pixel_list(decoded)[0]


def to_png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    PIL.Image.fromarray((pixels * 255).round().astype("uint8")).save(out, format="PNG")
    return out.getvalue()


def attach(gen: Generation, picture: PIL.Image.Image, mask: PIL.Image.Image | None,
           mask_field: str, inpaints_on_base: bool) -> None:
    """Sets ``gen``'s init image, and with a mask its mask condition and masked image: a family
    that inpaints with its base model (Flux) takes the image always and never the masked one;
    an inpainting UNet takes the masked image, and the image only to start below strength 1."""
    init = init_image(picture, gen.width, gen.height, gen.vae_scale_factor)
    if mask is None:
        gen.init_image = init
        return
    if mask.size != picture.size:
        raise InvalidArgument(f"mask is {mask.size[0]}x{mask.size[1]} but the image is "
                              f"{picture.size[0]}x{picture.size[1]}", field=mask_field)
    condition = mask_condition(mask, gen.width, gen.height, gen.vae_scale_factor)
    gen.mask = condition
    if inpaints_on_base:
        gen.init_image = init
        return
    gen.masked_image = init * (condition < 0.5)
    gen.init_image = init if gen.strength < 1.0 else None
