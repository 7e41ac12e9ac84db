"""A baseline request as the workers see it: a validated :class:`Job` in, an :class:`Output` out.

Errors carry a gRPC status name and the offending field, the way the fleet's
gateway reports them, so a client sees the same errors from both systems.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from bench.baseline_catalog import ModelCatalog
from diffusion.v1 import gateway_pb2

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5
MAX_STEPS = 500
MAX_GUIDANCE = 100.0
MIN_SIDE, MAX_SIDE = 16, 2048


class RequestError(Exception):
    """A request the baseline refuses: ``code`` is a gRPC status name."""

    def __init__(self, code: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True)
class ControlNetJob:
    name: str
    image: bytes
    scale: float
    start: float
    end: float


@dataclass(frozen=True)
class Job:
    """One validated request; images stay encoded until the worker decodes them."""

    request_id: str
    model: str
    workflow: str  # txt2img | img2img | inpaint
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    strength: float
    controlnets: tuple[ControlNetJob, ...]
    loras: tuple[tuple[str, float], ...]
    image: bytes | None
    mask: bytes | None
    preview: bool
    return_pixels: bool
    received: float
    deadline: float | None


@dataclass(frozen=True)
class Output:
    """A finished image: PNG bytes, the float pixels when asked for, and timings."""

    png: bytes
    pixels: bytes | None
    shape: tuple[int, int, int]
    metadata: dict[str, str] = field(default_factory=dict)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG of a float [H, W, 3] image in [0, 1], rounded the way diffusers rounds."""
    buf = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _image_size(data: bytes, field: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.size
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise RequestError("INVALID_ARGUMENT", f"not a decodable image: {error}", field) from None


def _side(value: int, default: int, field: str) -> int:
    side = value or default
    if side % 8 or not MIN_SIDE <= side <= MAX_SIDE:
        raise RequestError("INVALID_ARGUMENT",
                           f"{field} {side} must be a multiple of 8 in [{MIN_SIDE}, {MAX_SIDE}]",
                           field)
    return side


def _controlnets(req: gateway_pb2.GenerateRequest,
                 catalog: ModelCatalog) -> tuple[ControlNetJob, ...]:
    found = []
    for i, cn in enumerate(req.controlnets):
        where = f"controlnets[{i}]"
        if cn.name not in catalog.controlnets:
            raise RequestError("NOT_FOUND", f"unknown ControlNet {cn.name!r}", f"{where}.name")
        if not cn.image.data:
            raise RequestError("INVALID_ARGUMENT", "a ControlNet needs an image", f"{where}.image")
        _image_size(cn.image.data, f"{where}.image")
        end = cn.guidance_end or 1.0
        if not 0.0 <= cn.guidance_start < end <= 1.0:
            raise RequestError("INVALID_ARGUMENT", "need 0 <= guidance_start < guidance_end <= 1",
                               f"{where}.guidance_start")
        if not math.isfinite(cn.scale) or cn.scale < 0:
            raise RequestError("INVALID_ARGUMENT", "scale must be >= 0", f"{where}.scale")
        found.append(ControlNetJob(cn.name, cn.image.data, cn.scale or 1.0, cn.guidance_start,
                                   end))
    return tuple(found)


def _loras(req: gateway_pb2.GenerateRequest,
           catalog: ModelCatalog) -> tuple[tuple[str, float], ...]:
    seen: list[tuple[str, float]] = []
    for i, lora in enumerate(req.loras):
        if lora.name not in catalog.loras:
            raise RequestError("NOT_FOUND", f"unknown LoRA {lora.name!r}", f"loras[{i}].name")
        if lora.name in (name for name, _ in seen):
            raise RequestError("INVALID_ARGUMENT", f"LoRA {lora.name!r} listed twice",
                               f"loras[{i}].name")
        if not math.isfinite(lora.scale):
            raise RequestError("INVALID_ARGUMENT", "scale must be finite", f"loras[{i}].scale")
        seen.append((lora.name, lora.scale or 1.0))
    return tuple(seen)


def _init_image(req: gateway_pb2.GenerateRequest, templates: Mapping[str, bytes]) -> bytes | None:
    if req.template_id:
        if req.template_id not in templates:
            raise RequestError("NOT_FOUND", f"unknown template {req.template_id!r}",
                               "template_id")
        return templates[req.template_id]
    return req.image.data or None


def validate(req: gateway_pb2.GenerateRequest, catalog: ModelCatalog,
             templates: Mapping[str, bytes], received: float, deadline: float | None) -> Job:
    """The Job for ``req``, or RequestError naming the first bad field."""
    model = req.model or catalog.default_model()
    if model not in catalog.models:
        raise RequestError("NOT_FOUND", f"unknown model {model!r}", "model")
    steps = req.num_inference_steps or DEFAULT_STEPS
    if steps > MAX_STEPS:
        raise RequestError("INVALID_ARGUMENT", f"at most {MAX_STEPS} steps",
                           "num_inference_steps")
    guidance = req.guidance_scale if req.has_guidance_scale else DEFAULT_GUIDANCE
    if not (math.isfinite(guidance) and 0.0 <= guidance <= MAX_GUIDANCE):
        raise RequestError("INVALID_ARGUMENT", f"must be in [0, {MAX_GUIDANCE}]",
                           "guidance_scale")
    image = _init_image(req, templates)
    mask = req.mask.data or None
    if mask is not None and image is None:
        raise RequestError("INVALID_ARGUMENT", "a mask needs an image", "mask")
    size = _image_size(image, "image") if image is not None else None
    if mask is not None and _image_size(mask, "mask") != size:
        raise RequestError("INVALID_ARGUMENT", f"mask size differs from the image's {size}", "mask")
    if mask is not None:
        model = catalog.inpainting_for(model)
    elif catalog.models[model].kind == "inpainting":
        raise RequestError("INVALID_ARGUMENT", f"{model} is an inpainting model: send a mask",
                           "mask")
    default = catalog.models[model].default_size
    width = _side(req.width, size[0] if size else default, "width")
    height = _side(req.height, size[1] if size else default, "height")
    if size is not None and size != (width, height):
        raise RequestError("INVALID_ARGUMENT",
                           f"image is {size[0]}x{size[1]}, request asks {width}x{height}", "image")
    workflow = "inpaint" if mask is not None else "img2img" if image is not None else "txt2img"
    if req.strength and image is None:
        raise RequestError("INVALID_ARGUMENT", "strength needs an image", "strength")
    strength = req.strength or (1.0 if workflow == "inpaint" else 0.8)
    if not 0.0 < strength <= 1.0:
        raise RequestError("INVALID_ARGUMENT", "must be in (0, 1]", "strength")
    if workflow != "txt2img" and int(steps * strength) < 1:
        raise RequestError("INVALID_ARGUMENT", f"{steps} steps at strength {strength} run none",
                           "strength")
    return Job(
        request_id=req.request_id, model=model, workflow=workflow, prompt=req.prompt,
        negative_prompt=req.negative_prompt, width=width, height=height, steps=steps,
        guidance=guidance, seed=req.seed, strength=strength,
        controlnets=_controlnets(req, catalog), loras=_loras(req, catalog), image=image,
        mask=mask, preview=req.preview, return_pixels=req.return_pixels, received=received,
        deadline=deadline,
    )
