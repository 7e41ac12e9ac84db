"""The model families the fleet serves, and which one a model folder belongs to.

| family | pipelines | text encoders | denoiser |
|---|---|---|---|
| sd15 | StableDiffusion(Img2Img, Inpaint)Pipeline | CLIP | UNet |
| sdxl | StableDiffusionXL(Img2Img, Inpaint)Pipeline | two CLIPs | UNet, text_time |
| flux | Flux(Img2Img, Inpaint)Pipeline | CLIP (pooled) + T5 | FluxTransformer2DModel, packed |

Adding a family: a module with its :class:`~services.common.families.base.Family`, one entry
in ``FAMILIES``, its tiny tree and its tests.
"""

from __future__ import annotations

from typing import Any

from services.common.families.base import Conditioning, Family, PromptInput, TextModels
from services.common.families.flux import Flux
from services.common.families.sd15 import StableDiffusion
from services.common.families.sdxl import StableDiffusionXL

FAMILIES: dict[str, Family] = {f.name: f for f in (StableDiffusion(), StableDiffusionXL(),
                                                   Flux())}

__all__ = ["FAMILIES", "Conditioning", "Family", "PromptInput", "TextModels", "detect"]


def detect(index: dict[str, Any]) -> Family:
    """The family of a pipeline folder, from its ``model_index.json``; ValueError if none."""
    class_name = index.get("_class_name", "")
    for family in FAMILIES.values():
        if class_name in family.pipelines:
            return family
    raise ValueError(f"pipeline {class_name!r} is not of a family this fleet serves "
                     f"({', '.join(FAMILIES)})")
