"""What a caller passes to ``generate``: parameters, ControlNets, LoRAs and images.

Images travel as encoded PNG bytes (``ImageInput.data``). A caller may give a PIL
image, a numpy array (uint8, or float in [0, 1]), a path to an image file, or
bytes that already hold an encoded image.
"""

from __future__ import annotations

import io
import os
import secrets
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from PIL import Image

from diffusion.v1 import gateway_pb2

ImageLike = Image.Image | np.ndarray | bytes | str | os.PathLike

# The samplers a request may name (ListModels says which a model takes: the flow-match ones
# Flux models, the others SD1.5 and SDXL models); "default" is the model's own.
SCHEDULERS = ("default", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde",
              "ddim", "unipc", "lcm", "flow_match_euler", "flow_match_euler_karras")


@dataclass(frozen=True)
class ControlNet:
    """One ControlNet of a request: its name in the fleet and its conditioning image."""

    name: str
    image: ImageLike
    scale: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0


@dataclass(frozen=True)
class IpAdapter:
    """An image prompt through one of the fleet's IP-Adapters; ``scale`` in [0, 2]."""

    name: str
    image: ImageLike
    scale: float = 1.0


@dataclass(frozen=True)
class Lora:
    """One LoRA of a request: ``scale`` on the denoiser (read as 1.0 when 0, unless
    ``text_encoder_scale`` is given), ``text_encoder_scale`` on the text encoders (None: the
    same as ``scale``)."""

    name: str
    scale: float = 1.0
    text_encoder_scale: float | None = None


@dataclass(frozen=True)
class Approximations:
    """Switches for the fleet's approximations; all off computes the exact pipeline."""

    lora_async_steps: int = 0
    stale_controlnet: bool = False
    activation_cache: bool = False
    cfg_parallel: bool = False


class GenerateParams(TypedDict, total=False):
    """Keyword parameters of ``generate`` and ``stream`` (all optional)."""

    model: str
    negative_prompt: str
    width: int | None
    height: int | None
    steps: int | None
    guidance_scale: float | None
    seed: int | None
    controlnets: list[ControlNet] | tuple[ControlNet, ...]
    loras: list[Lora] | tuple[Lora, ...]
    ip_adapters: list[IpAdapter] | tuple[IpAdapter, ...]
    image: ImageLike | None
    mask: ImageLike | None
    strength: float | None
    preview: bool
    return_pixels: bool
    template_id: str
    request_id: str
    approximations: Approximations | None
    scheduler: str
    num_images: int
    workflow: str                  # a registered workflow's id (or a built-in's name)
    inputs: dict[str, object]      # its inputs: str text, int, float, or an image (PIL image,
                                   # numpy array, encoded bytes, pathlib.Path)
    priority: int                  # -10..10; higher runs first where requests queue
    quality: str


def encode_image(image: ImageLike) -> bytes:
    """PNG bytes of ``image``; bytes are passed through as an already encoded image."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            return f.read()
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, numpy array, path or bytes, got {type(image)}")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image_input(image: ImageLike) -> gateway_pb2.ImageInput:
    return gateway_pb2.ImageInput(data=encode_image(image))


def build_request(prompt: str, params: GenerateParams) -> gateway_pb2.GenerateRequest:
    """The ``GenerateRequest`` for ``prompt`` and ``params``.

    A missing seed is drawn at random, except for a template edit, where 0 asks for the
    template's own seed (the one its cached activations were recorded with), and for a
    workflow, whose seed is one of its inputs.
    """
    seed = params.get("seed")
    if seed is None:
        seed = 0 if params.get("template_id") or params.get("workflow") \
            else secrets.randbelow(2**32)
    request = gateway_pb2.GenerateRequest(
        request_id=params.get("request_id", ""),
        model=params.get("model", ""),
        prompt=prompt,
        negative_prompt=params.get("negative_prompt", ""),
        width=params.get("width") or 0,
        height=params.get("height") or 0,
        num_inference_steps=params.get("steps") or 0,
        seed=seed,
        strength=params.get("strength") or 0.0,
        preview=params.get("preview", False),
        return_pixels=params.get("return_pixels", False),
        template_id=params.get("template_id", ""),
        scheduler=params.get("scheduler", ""),
        quality=params.get("quality", ""),
    )
    request.priority = params.get("priority", 0)
    if params.get("workflow"):
        from dfleet.workflow_calls import add_workflow_fields

        add_workflow_fields(request, params["workflow"], params.get("inputs"))
    num_images = params.get("num_images")
    if num_images is not None:
        request.num_images = num_images
    guidance = params.get("guidance_scale")
    if guidance is not None:
        request.guidance_scale = guidance
        request.has_guidance_scale = True
    for cn in params.get("controlnets", ()):
        request.controlnets.append(gateway_pb2.ControlNetInput(
            name=cn.name, image=_image_input(cn.image), scale=cn.scale,
            guidance_start=cn.guidance_start, guidance_end=cn.guidance_end))
    for lora in params.get("loras", ()):
        request.loras.append(gateway_pb2.LoraInput(name=lora.name, scale=lora.scale,
                                                   text_encoder_scale=lora.text_encoder_scale))
    for adapter in params.get("ip_adapters", ()):
        request.ip_adapters.append(gateway_pb2.IpAdapterInput(
            name=adapter.name, image=_image_input(adapter.image), scale=adapter.scale))
    image, mask = params.get("image"), params.get("mask")
    if image is not None:
        request.image.CopyFrom(_image_input(image))
    if mask is not None:
        request.mask.CopyFrom(_image_input(mask))
    approx = params.get("approximations")
    if approx is not None:
        request.approximations.CopyFrom(gateway_pb2.Approximations(
            lora_async_steps=approx.lora_async_steps, stale_controlnet=approx.stale_controlnet,
            activation_cache=approx.activation_cache, cfg_parallel=approx.cfg_parallel))
    return request


def build_template_request(model: str, image: ImageLike, prompt: str = "", warm_up: bool = False,
                           seed: int = 0, steps: int | None = None,
                           guidance_scale: float | None = None
                           ) -> gateway_pb2.RegisterTemplateRequest:
    """The template and the recipe its edits use (``None`` = the gateway's default)."""
    return gateway_pb2.RegisterTemplateRequest(
        model=model, image=_image_input(image), prompt=prompt, warm_up=warm_up, seed=seed,
        num_inference_steps=steps or 0, guidance_scale=guidance_scale or 0.0,
        has_guidance_scale=guidance_scale is not None)
