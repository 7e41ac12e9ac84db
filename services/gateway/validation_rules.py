"""Checks shared by the request's validation, its attachments' and a workflow's binding
(errors name the field)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from services.common.errors import InvalidArgument

if TYPE_CHECKING:
    import PIL.Image

    from services.common.families import Family
    from services.gateway.settings import GatewaySettings


def in_range(value: float, low: float, high: float, name: str) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(f"{value} is outside [{low}, {high}]", field=name)


# The generation parameters a plain request and a workflow's denoise node share: resolved and
# checked once here, so both say the same about the same value (``field`` names it as the
# request gave it: "width", or "workflow.nodes.latent.width", ...).

MAX_IMAGES = 8


def side(value: int, default: int, field: str, limits: GatewaySettings, factor: int,
         family: str) -> int:
    size = value or default
    if size % factor or size < factor:
        raise InvalidArgument(f"{size} is not a positive multiple of {factor} ({family} models)",
                              field=field)
    if size > limits.max_side:
        raise InvalidArgument(f"{size} is over the limit of {limits.max_side}", field=field)
    return size


def default_sides(model_default: int, picture: PIL.Image.Image | None, vsf: int,
                  factor: int) -> tuple[int, int]:
    """(width, height) when the request gives none: the input picture's, else the model's
    default, rounded down to whole latents and to the family's multiple."""
    width, height = picture.size if picture is not None else (model_default, model_default)
    return (width // vsf * vsf // factor * factor, height // vsf * vsf // factor * factor)


def steps(given: int, limits: GatewaySettings, field: str) -> int:
    count = given or limits.default_steps
    if not 1 <= count <= limits.max_steps:
        raise InvalidArgument(f"{count} is outside 1..{limits.max_steps}", field=field)
    return count


def guidance(given: float | None, family: Family, limits: GatewaySettings, field: str) -> float:
    """The given scale, else the family's default (Flux's distilled guidance), else the
    fleet's."""
    scale = ((family.default_guidance or limits.default_guidance) if given is None
             else float(given))
    in_range(scale, 0.0, limits.max_guidance, field)
    return scale


def strength(given: float, family: Family, masked: bool, field: str) -> float:
    value = float(given or (family.default_inpaint_strength if masked
                            else family.default_strength))
    in_range(value, 1e-6, 1.0, field)
    return value


def image_count(given: int, field: str) -> int:
    if not 1 <= given <= MAX_IMAGES:
        raise InvalidArgument(f"{given} is outside 1..{MAX_IMAGES}", field=field)
    return given
