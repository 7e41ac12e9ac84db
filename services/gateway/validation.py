"""Checks every field of a GenerateRequest and turns it into a :class:`Workflow`.

Errors name the offending field: INVALID_ARGUMENT for a bad value, NOT_FOUND
for an unknown model, ControlNet or LoRA.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field

import torch

from diffusion.v1 import gateway_pb2
from services.common.errors import InvalidArgument
from services.common.model_store import ModelStore
from services.gateway import images
from services.gateway.settings import GatewaySettings

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True)
class ControlNetPlan:
    name: str
    image: torch.Tensor
    scale: float
    guidance_start: float
    guidance_end: float


@dataclass(frozen=True)
class LoraPlan:
    name: str
    scale: float


@dataclass
class Workflow:
    """One validated request: everything the graph runner needs, nothing gRPC."""

    request_id: str
    model: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    strength: float = 1.0
    init_image: torch.Tensor | None = None     # image-to-image, or inpainting with strength < 1
    mask: torch.Tensor | None = None
    masked_image: torch.Tensor | None = None
    controlnets: list[ControlNetPlan] = field(default_factory=list)
    loras: list[LoraPlan] = field(default_factory=list)
    preview: bool = False
    return_pixels: bool = False
    lora_async_steps: int = 0        # BAL bound K; -1 = the stored profile's; 0 = exact
    stale_controlnet: bool = False   # step t uses step t-1's ControlNet residuals
    cfg_parallel: bool = False       # unconditional pass on a second denoiser replica
    template_id: str = ""            # an edit of a registered template (already expanded)
    activation_cache: bool = False   # the edit reuses the template's recorded activations

    @property
    def kind(self) -> str:
        base = "inpaint" if self.mask is not None else (
            "img2img" if self.init_image is not None else "txt2img")
        extras = ["controlnet"] * bool(self.controlnets) + ["lora"] * bool(self.loras)
        return "+".join([base, *extras])

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0


def _in_range(value: float, low: float, high: float, name: str) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgument(f"{value} is outside [{low}, {high}]", field=name)


def _size(value: int, default: int, name: str, limits: GatewaySettings, vsf: int) -> int:
    size = value or default
    if size % vsf or size < vsf:
        raise InvalidArgument(f"{size} is not a positive multiple of {vsf}", field=name)
    if size > limits.max_side:
        raise InvalidArgument(f"{size} is over the limit of {limits.max_side}", field=name)
    return size


def _first_base_model(store: ModelStore) -> str:
    bases = sorted(e.name for e in store.entries("base"))
    if not bases:
        raise InvalidArgument("no model given and the fleet has no base model", field="model")
    return bases[0]


def validate(req: gateway_pb2.GenerateRequest, store: ModelStore,
             limits: GatewaySettings) -> Workflow:
    request_id = req.request_id or uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument("use 1-128 characters of [A-Za-z0-9._:-]", field="request_id")
    model = req.model or limits.default_model or _first_base_model(store)
    entry = store.pipeline(model)
    approx = req.approximations
    if approx.activation_cache and not req.template_id:
        raise InvalidArgument("the activation cache serves edits of a registered template",
                              field="approximations.activation_cache")
    if not req.prompt.strip():
        raise InvalidArgument("a prompt is required", field="prompt")
    for name in ("prompt", "negative_prompt"):
        if len(getattr(req, name)) > limits.max_prompt_chars:
            raise InvalidArgument(f"longer than {limits.max_prompt_chars} characters", field=name)
    vsf = 2 ** (len(store.vae_block_channels(model)) - 1)
    image = mask = None
    if req.HasField("image"):
        image = images.decode(req.image.data, "image", limits.max_image_bytes)
    if req.HasField("mask"):
        if image is None:
            raise InvalidArgument("a mask needs an image to edit", field="mask")
        mask = images.decode(req.mask.data, "mask", limits.max_image_bytes)
        if mask.size != image.size:
            raise InvalidArgument(f"mask is {mask.size[0]}x{mask.size[1]} but the image is "
                                  f"{image.size[0]}x{image.size[1]}", field="mask")
    if entry.kind == "inpainting" and mask is None:
        raise InvalidArgument(f"model {model!r} is an inpainting model: give image and mask",
                              field="mask")
    if mask is not None and entry.kind != "inpainting":
        raise InvalidArgument(f"model {model!r} cannot inpaint; use an inpainting model",
                              field="model")
    default_w = (image.size[0] // vsf * vsf) if image is not None else entry.default_size
    default_h = (image.size[1] // vsf * vsf) if image is not None else entry.default_size
    width = _size(req.width, default_w, "width", limits, vsf)
    height = _size(req.height, default_h, "height", limits, vsf)
    steps = req.num_inference_steps or limits.default_steps
    if steps > limits.max_steps:
        raise InvalidArgument(f"{steps} is over the limit of {limits.max_steps}",
                              field="num_inference_steps")
    guidance = req.guidance_scale if req.has_guidance_scale else limits.default_guidance
    _in_range(guidance, 0.0, limits.max_guidance, "guidance_scale")
    if req.strength and image is None:
        raise InvalidArgument("strength needs an image", field="strength")
    strength = req.strength or (1.0 if mask is not None else 0.8)
    _in_range(strength, 1e-6, 1.0, "strength")
    flow = Workflow(
        request_id=request_id, model=model, prompt=req.prompt,
        negative_prompt=req.negative_prompt, width=width, height=height, steps=steps,
        guidance_scale=guidance, seed=req.seed, strength=strength, preview=req.preview,
        return_pixels=req.return_pixels, lora_async_steps=approx.lora_async_steps,
        stale_controlnet=approx.stale_controlnet, cfg_parallel=approx.cfg_parallel,
        template_id=req.template_id, activation_cache=approx.activation_cache)
    if not -1 <= approx.lora_async_steps <= steps:
        raise InvalidArgument(f"{approx.lora_async_steps} is not -1 (profile), 0 (exact) or a "
                              f"step bound up to {steps}", field="approximations.lora_async_steps")
    if image is not None:
        init = images.init_image(image, width, height, vsf)
        if mask is not None:
            condition = images.mask_condition(mask, width, height, vsf)
            flow.mask = condition
            flow.masked_image = init * (condition < 0.5)
            flow.init_image = init if strength < 1.0 else None
        else:
            flow.init_image = init
    flow.controlnets = _controlnets(req, store, limits, entry.kind, width, height, vsf)
    flow.loras = _loras(req, store, limits)
    return flow


def _controlnets(req: gateway_pb2.GenerateRequest, store: ModelStore, limits: GatewaySettings,
                 kind: str, width: int, height: int, vsf: int) -> list[ControlNetPlan]:
    if len(req.controlnets) > limits.max_controlnets:
        raise InvalidArgument(f"at most {limits.max_controlnets}", field="controlnets")
    if req.controlnets and kind == "inpainting":
        raise InvalidArgument("ControlNets are not served with inpainting models",
                              field="controlnets")
    plans = []
    for i, c in enumerate(req.controlnets):
        where = f"controlnets[{i}]"
        store.get(c.name, ("controlnet",), field=f"{where}.name")
        if not c.HasField("image"):
            raise InvalidArgument("a control image is required", field=f"{where}.image")
        picture = images.decode(c.image.data, f"{where}.image", limits.max_image_bytes)
        scale = c.scale or 1.0
        _in_range(scale, 0.0, 10.0, f"{where}.scale")
        end = c.guidance_end or 1.0
        _in_range(c.guidance_start, 0.0, 1.0, f"{where}.guidance_start")
        _in_range(end, 0.0, 1.0, f"{where}.guidance_end")
        if c.guidance_start >= end:
            raise InvalidArgument(f"guidance_start={c.guidance_start} must be below "
                                  f"guidance_end={end}", field=f"{where}.guidance_start")
        plans.append(ControlNetPlan(c.name, images.control_image(picture, width, height, vsf),
                                    scale, c.guidance_start, end))
    return plans


def _loras(req: gateway_pb2.GenerateRequest, store: ModelStore,
           limits: GatewaySettings) -> list[LoraPlan]:
    if len(req.loras) > limits.max_loras:
        raise InvalidArgument(f"at most {limits.max_loras}", field="loras")
    plans: list[LoraPlan] = []
    for i, lora in enumerate(req.loras):
        store.get(lora.name, ("lora",), field=f"loras[{i}].name")
        if any(p.name == lora.name for p in plans):
            raise InvalidArgument(f"LoRA {lora.name!r} is listed twice", field=f"loras[{i}].name")
        scale = lora.scale or 1.0
        _in_range(scale, -4.0, 4.0, f"loras[{i}].scale")
        plans.append(LoraPlan(lora.name, scale))
    return plans
