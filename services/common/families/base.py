"""What a model family is: the parts of a pipeline that must agree, and how each role uses them.

A family fixes which text encoders a model has and how their outputs combine into the
conditioning that travels with the latents, the denoiser's forward, the latent layout, which
ControlNets fit, the VAE's scaling, the image sizes it takes and the add-ons it serves. One
module per family (:mod:`services.common.families`); the services ask the family of a model
rather than testing what it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from services.common import schedulers
from services.common.errors import InvalidArgument

Conditioning = dict[str, torch.Tensor]   # named tensors of one prompt, e.g. "prompt_embeds"


@dataclass(frozen=True)
class PromptInput:
    """One prompt to encode; ``zeros`` asks for all-zero conditioning of the same shape (the
    empty negative prompt of families that zero it)."""

    text: str
    zeros: bool = False


@dataclass
class TextModels:
    """A model's tokenizers and text encoders, in the family's order."""

    tokenizers: list[Any]
    encoders: list[Any]


class Family:
    name: ClassVar[str] = ""
    pipelines: ClassVar[frozenset[str]] = frozenset()   # model_index.json _class_name values
    denoiser: ClassVar[str] = "unet"                    # the component that denoises
    text_components: ClassVar[tuple[tuple[str, str], ...]] = ()  # (tokenizer, encoder) folders
    addons: ClassVar[frozenset[str]] = frozenset()      # attachments served on this family
    zero_empty_negative: ClassVar[bool] = False
    schedulers: ClassVar[tuple[str, ...]] = schedulers.NOISE_PREDICTION  # names it takes
    classifier_free_guidance: ClassVar[bool] = True     # guidance_scale > 1 runs uncond rows
    default_guidance: ClassVar[float | None] = None     # None: the gateway's default
    # Inpainting on the base model (no 9-channel denoiser): the pipeline re-noises the image
    # and pastes it back outside the mask each step, so it always needs the image's latents
    # and never the masked image's.
    inpaints_on_base: ClassVar[bool] = False
    # ControlNets read the control image's VAE latents, sampled before the noise (Flux), not
    # the image
    controlnets_read_latents: ClassVar[bool] = False
    default_strength: ClassVar[float] = 0.8              # image-to-image
    default_inpaint_strength: ClassVar[float] = 1.0

    def default_size(self, denoiser_config: dict[str, Any], vae_scale_factor: int) -> int:
        """The image side the pipelines default to."""
        return int(denoiser_config.get("sample_size", 64)) * vae_scale_factor

    def check_scheduler(self, name: str, field: str = "scheduler") -> str:
        """``name`` (empty = default) if this family takes it; INVALID_ARGUMENT if not."""
        name = schedulers.check_name(name, field)
        if name not in self.schedulers:
            raise InvalidArgument(f"{self.name} models take the schedulers "
                                  f"{', '.join(self.schedulers)}, not {name!r}", field=field)
        return name

    # sizes
    def size_factor(self, vae_scale_factor: int) -> int:
        """Width and height must be multiples of this (pixels per latent token side)."""
        return vae_scale_factor

    def check_size(self, width: int, height: int, vae_scale_factor: int) -> None:
        factor = self.size_factor(vae_scale_factor)
        for name, value in (("width", width), ("height", height)):
            if value % factor or value < factor:
                raise InvalidArgument(f"{value} is not a positive multiple of {factor} "
                                      f"({self.name} models)", field=name)

    # ControlNets
    def fits_controlnet(self, controlnet: dict[str, Any], denoiser: dict[str, Any]) -> bool:
        """Whether a ControlNet (its config) can run beside this denoiser (its config)."""
        return False

    # the text encoder role
    def encode(self, models: TextModels, prompts: list[PromptInput]) -> list[Conditioning]:
        raise NotImplementedError(f"{self.name} has no text encoding")

    # the denoiser role
    def added_cond(self, conditioning: Conditioning, width: int, height: int
                   ) -> Conditioning | None:
        """Per-prompt tensors the denoiser adds to its input (SDXL's pooled text and time ids),
        or None."""
        return None
