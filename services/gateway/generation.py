"""A validated Generate request: its own fields as domain types, and its attachments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from services.gateway.attachments.base import Attachment
    from services.gateway.workflows.plan import Plan


@dataclass
class Generation:
    """One validated request: everything the request flow needs, nothing gRPC."""

    request_id: str
    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    vae_scale_factor: int
    family: str = "sd15"
    classifier_free: bool = True  # the family's guidance is classifier-free (not Flux's)
    strength: float = 1.0
    init_image: torch.Tensor | None = None     # image-to-image, or inpainting with strength < 1
    mask: torch.Tensor | None = None
    masked_image: torch.Tensor | None = None
    zero_negative: bool = False   # an empty negative prompt is all zeros (SDXL pipelines)
    scheduler: str = ""
    num_images: int = 1
    return_pixels: bool = False
    priority: int = 0
    quality: str = "full"         # full | fast | auto (services.gateway.tiers)
    tier: str = "full"            # the tier it runs on
    slim_model: str = ""          # auto: the slimmed tier placement may switch to
    attachments: list[Attachment] = field(default_factory=list)
    plan: Plan | None = None      # the workflow it runs (a plain request's: a built-in one)

    @property
    def kind(self) -> str:
        if self.plan is not None and not self.plan.registered.builtin:
            return "workflow"   # a registered one (its name and id are in the metadata)
        base = "inpaint" if self.mask is not None else (
            "img2img" if self.init_image is not None else "txt2img")
        return "+".join([base, *(a.label for a in self.attachments if a.label)])

    @property
    def do_cfg(self) -> bool:
        """Whether the denoiser runs unconditional rows (a negative prompt is encoded)."""
        return self.classifier_free and self.guidance_scale > 1.0

    def attachment(self, name: str) -> Attachment | None:
        return next((a for a in self.attachments if a.name == name), None)
