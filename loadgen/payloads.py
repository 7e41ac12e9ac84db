"""The SDK call of a scheduled request: its parameters and its synthetic images.

Images are built in code (no files): a smooth colour field with a few shapes as
the image to transform or edit, a line drawing as the ControlNet condition, and
a centred rectangle covering the drawn fraction of the image as the edit mask.
They are encoded once per size and reused.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

import dfleet
from loadgen.schedule import ScheduledRequest
from loadgen.workload import WorkloadSpec

DEFAULT_SIDE = 64


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@lru_cache(maxsize=16)
def scene_png(width: int, height: int) -> bytes:
    """A colour gradient with a disc and a box: something to transform or edit."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / max(1, width - 1), y / max(1, height - 1),
                    0.5 + 0.5 * np.sin(x / 7.0)], axis=-1)
    image = Image.fromarray((rgb * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 8, height // 8, width // 2, height // 2), fill=(230, 200, 40))
    draw.rectangle((width // 2, height // 2, width * 7 // 8, height * 7 // 8), fill=(40, 60, 200))
    return _png(image)


@lru_cache(maxsize=16)
def control_png(width: int, height: int) -> bytes:
    """White lines on black, the look of an edge map."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for k in range(1, 4):
        draw.rectangle((width * k // 8, height * k // 8, width * (8 - k) // 8,
                        height * (8 - k) // 8), outline=(255, 255, 255))
    draw.line((0, 0, width, height), fill=(255, 255, 255))
    return _png(image)


@lru_cache(maxsize=256)
def mask_png(width: int, height: int, ratio: float) -> bytes:
    """White (repaint) over a centred rectangle of about ``ratio`` of the area."""
    side = np.sqrt(ratio)
    w, h = max(1, round(width * side)), max(1, round(height * side))
    x0, y0 = (width - w) // 2, (height - h) // 2
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y0 + h, x0:x0 + w] = 255
    return _png(Image.fromarray(mask, mode="L").convert("RGB"))


def request_params(req: ScheduledRequest, work: WorkloadSpec) -> dfleet.GenerateParams:
    """Keyword arguments of ``AsyncClient.stream`` for ``req``."""
    width, height = work.width or DEFAULT_SIDE, work.height or DEFAULT_SIDE
    params: dfleet.GenerateParams = {
        "model": work.model, "width": work.width or None, "height": work.height or None,
        "steps": work.steps, "guidance_scale": work.guidance, "seed": req.seed,
    }
    if req.workflow in ("controlnet", "controlnet_lora"):
        params["controlnets"] = [dfleet.ControlNet(req.controlnet, control_png(width, height),
                                                   scale=work.controlnet_scale)]
    if req.workflow in ("lora", "controlnet_lora"):
        params["loras"] = [dfleet.Lora(req.lora, scale=work.lora_scale)]
    if req.workflow == "img2img":
        params["image"] = scene_png(width, height)
        params["strength"] = work.strength
    elif req.workflow == "edit":
        params["model"] = work.edit_model or work.model
        params["image"] = scene_png(width, height)
        params["mask"] = mask_png(width, height, req.mask_ratio)
    return params
