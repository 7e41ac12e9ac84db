"""Checks every field of a GenerateRequest and turns it into a :class:`Generation`.

Errors name the offending field: INVALID_ARGUMENT for a bad value, NOT_FOUND
for an unknown model, ControlNet or LoRA. The request's own fields are checked
here; each attachment kind checks its own (:mod:`services.gateway.attachments`).
"""

from __future__ import annotations

import re
import uuid

from diffusion.v1 import gateway_pb2
from services.common.errors import InvalidArgument
from services.common.families import Family
from services.common.model_store import ModelStore
from services.gateway import images, tiers
from services.gateway import validation_rules as rules
from services.gateway.attachments import AttachmentKinds
from services.gateway.generation import Generation
from services.gateway.settings import GatewaySettings

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

def _check_inpainting(model: str, kind: str, family: Family, masked: bool) -> None:
    """An inpainting model needs a mask; a base model takes one when its family inpaints
    with the base model (Flux)."""
    if kind == "inpainting" and not masked:
        raise InvalidArgument(f"model {model!r} is an inpainting model: give image and mask",
                              field="mask")
    if masked and kind != "inpainting" and not family.inpaints_on_base:
        raise InvalidArgument(f"model {model!r} cannot inpaint; use an inpainting model",
                              field="model")


def _first_base_model(store: ModelStore) -> str:
    base = store.first_base()
    if base is None:
        raise InvalidArgument("no model given and the fleet has no base model", field="model")
    return base


def validate(req: gateway_pb2.GenerateRequest, store: ModelStore, limits: GatewaySettings,
             attachments: AttachmentKinds) -> Generation:
    """The request's own fields, then each attachment kind's."""
    request_id = req.request_id or uuid.uuid4().hex
    if not REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument("use 1-128 characters of [A-Za-z0-9._:-]", field="request_id")
    model = req.model or limits.default_model or _first_base_model(store)
    entry = store.pipeline(model)
    if not req.prompt.strip():
        raise InvalidArgument("a prompt is required", field="prompt")
    for name in ("prompt", "negative_prompt"):
        if len(getattr(req, name)) > limits.max_prompt_chars:
            raise InvalidArgument(f"longer than {limits.max_prompt_chars} characters", field=name)
    vsf = store.vae_scale_factor(model)
    family = store.family(model)
    image = mask = None
    if req.HasField("image"):
        image = images.decode(req.image.data, "image", limits.max_image_bytes)
    if req.HasField("mask"):
        if image is None:
            raise InvalidArgument("a mask needs an image to edit", field="mask")
        mask = images.decode(req.mask.data, "mask", limits.max_image_bytes)
    _check_inpainting(model, entry.kind, family, mask is not None)
    if req.negative_prompt and not family.classifier_free_guidance:
        raise InvalidArgument(f"{family.name} models run without classifier-free guidance "
                              "(their guidance is distilled); leave it empty",
                              field="negative_prompt")
    factor = family.size_factor(vsf)
    default_w, default_h = rules.default_sides(entry.default_size, image, vsf, factor)
    width = rules.side(req.width, default_w, "width", limits, factor, family.name)
    height = rules.side(req.height, default_h, "height", limits, factor, family.name)
    steps = rules.steps(req.num_inference_steps, limits, "num_inference_steps")
    guidance = rules.guidance(req.guidance_scale if req.has_guidance_scale else None, family,
                              limits, "guidance_scale")
    if req.strength and image is None:
        raise InvalidArgument("strength needs an image", field="strength")
    strength = rules.strength(req.strength, family, mask is not None, "strength")
    num_images = rules.image_count(req.num_images if req.HasField("num_images") else 1,
                                   "num_images")
    gen = Generation(
        request_id=request_id, model=model, prompt=req.prompt,
        negative_prompt=req.negative_prompt, width=width, height=height, steps=steps,
        guidance_scale=guidance, seed=req.seed, vae_scale_factor=vsf, family=family.name,
        classifier_free=family.classifier_free_guidance,
        zero_negative=(family.zero_empty_negative and not req.negative_prompt
                       and bool(store.pipeline_config(model).get(
                           "force_zeros_for_empty_prompt", False))),
        strength=strength,
        scheduler=family.check_scheduler(req.scheduler), num_images=num_images,
        return_pixels=req.return_pixels)
    if image is not None:
        images.attach(gen, image, mask, "mask", family.inpaints_on_base)
    gen.attachments = attachments.validate(req, gen, store, limits)
    tiers.apply(req.quality, gen, store)
    return gen
