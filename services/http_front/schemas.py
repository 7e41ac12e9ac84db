"""The JSON bodies of the HTTP front and their conversion to SDK parameters: the one
place a request field is mapped. A field the SDK's ``GenerateParams`` gains is added to
:class:`GenerateBody` and, when its JSON form differs, to :func:`generate_params`
(tests/test_http_front.py fails while the two disagree)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import dfleet
from dfleet.errors import InvalidArgument
from dfleet.inputs import GenerateParams

_SIZE = re.compile(r"^([1-9][0-9]*)x([1-9][0-9]*)$")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is an error, never ignored


class ControlNetBody(_Body):
    name: str = Field(description="ControlNet as the fleet lists it")
    image: str = Field(description="conditioning image, base64 PNG or JPEG")
    scale: float = Field(1.0, description="conditioning scale")
    guidance_start: float = Field(0.0, description="fraction of steps where it starts")
    guidance_end: float = Field(1.0, description="fraction of steps where it ends")


class IpAdapterBody(_Body):
    name: str = Field(description="IP-Adapter as the fleet lists it")
    image: str = Field(description="the image prompt, base64 PNG or JPEG")
    scale: float = Field(1.0, description="adapter scale in [0, 2]")


class LoraBody(_Body):
    name: str = Field(description="LoRA as the fleet lists it")
    scale: float = Field(1.0, description="LoRA scale")
    text_encoder_scale: float | None = Field(
        None, description="scale on the text encoders; default: the same as scale")


class ImageValueBody(_Body):
    image: str = Field(description="an image input of a workflow, base64 PNG or JPEG")


class ApproximationsBody(_Body):
    lora_async_steps: int = Field(0, description="BAL bound K; 0 = exact")
    stale_controlnet: bool = Field(False, description="step t uses step t-1's residuals")
    activation_cache: bool = Field(False, description="template edits reuse activations")
    cfg_parallel: bool = Field(False, description="unconditional pass on a second replica")


class GenerateBody(_Body):
    """One request, every field of the gateway's GenerateRequest (images as base64)."""

    prompt: str = Field("", description="what the image should show")
    model: str = Field("", description="model; empty = the gateway's default")
    negative_prompt: str = ""
    width: int | None = Field(None, description="pixels; default: the model's")
    height: int | None = Field(None, description="pixels; default: the model's")
    steps: int | None = Field(None, description="denoising steps; default: the gateway's")
    guidance_scale: float | None = None
    seed: int | None = Field(None, description="default: random (a template's for edits)")
    controlnets: list[ControlNetBody] = []
    loras: list[LoraBody] = []
    ip_adapters: list[IpAdapterBody] = []
    image: str | None = Field(None, description="init or edited image, base64")
    mask: str | None = Field(None, description="white = repaint, base64")
    strength: float | None = None
    preview: bool = False
    return_pixels: bool = Field(False, description="not offered over HTTP: PNGs only")
    template_id: str = ""
    request_id: str = Field("", description="your id for the request; default: assigned")
    approximations: ApproximationsBody | None = None
    scheduler: str = Field("", description="sampler by name; empty = the model's own")
    num_images: int | None = Field(None, description="1-8 images, seeds seed, seed+1, ...")
    workflow: str = Field("", description="a registered workflow's id or a built-in's name; "
                                          "its inputs then replace the fields above")
    inputs: dict[str, int | float | str | ImageValueBody] = Field(
        {}, description="the workflow's inputs: text, numbers, or {\"image\": base64}")
    priority: int = Field(0, description="-10..10; higher runs first where requests queue")
    quality: str = Field("", description="full (default), fast: the model's slimmed tier, or "
                                         "auto: the slimmed tier when full would miss the deadline")


class OpenAIImagesBody(_Body):
    """OpenAI's ``images.generate`` request, as far as a fleet can honour it."""

    prompt: str
    model: str | None = Field(None, description="fleet model; default: the gateway's")
    n: int = Field(1, description="images to generate (num_images)")
    size: str | None = Field(None, description="WIDTHxHEIGHT; default: the model's")
    response_format: Literal["b64_json", "url"] = "b64_json"


def _image(data: str | None, field: str) -> bytes | None:
    if data is None:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(message=f"{field}: not valid base64", field=field) from None


def generate_params(body: GenerateBody) -> tuple[str, GenerateParams]:
    """The prompt and SDK parameters of a native request."""
    if body.return_pixels:
        raise InvalidArgument(message="return_pixels: float images are not offered over "
                                      "HTTP; ask for PNGs", field="return_pixels")
    values: dict[str, Any] = body.model_dump(
        exclude={"prompt", "controlnets", "loras", "ip_adapters", "image", "mask",
                 "approximations", "inputs"}, exclude_defaults=True)
    values["controlnets"] = [
        dfleet.ControlNet(c.name, image=_image(c.image, f"controlnets[{i}].image") or b"",
                          scale=c.scale, guidance_start=c.guidance_start,
                          guidance_end=c.guidance_end) for i, c in enumerate(body.controlnets)]
    values["loras"] = [dfleet.Lora(lo.name, scale=lo.scale,
                                   text_encoder_scale=lo.text_encoder_scale)
                       for lo in body.loras]
    if body.inputs:
        values["inputs"] = {
            name: (_image(value.image, f"inputs.{name}") if isinstance(value, ImageValueBody)
                   else value) for name, value in body.inputs.items()}
    values["ip_adapters"] = [
        dfleet.IpAdapter(a.name, image=_image(a.image, f"ip_adapters[{i}].image") or b"",
                         scale=a.scale) for i, a in enumerate(body.ip_adapters)]
    values["image"] = _image(body.image, "image")
    values["mask"] = _image(body.mask, "mask")
    if body.approximations is not None:
        values["approximations"] = dfleet.Approximations(**body.approximations.model_dump())
    return body.prompt, GenerateParams(**values)  # type: ignore[typeddict-item]


def openai_params(body: OpenAIImagesBody) -> GenerateParams:
    if body.response_format != "b64_json":
        raise InvalidArgument(message="response_format: url is not offered (the fleet keeps "
                                      "no image store); use b64_json", field="response_format")
    params = GenerateParams(num_images=body.n)
    if body.model:
        params["model"] = body.model
    if body.size is not None:
        match = _SIZE.match(body.size)
        if match is None:
            raise InvalidArgument(message=f"size: {body.size!r} is not WIDTHxHEIGHT, "
                                          "e.g. 512x512", field="size")
        params["width"], params["height"] = int(match[1]), int(match[2])
    return params


def result_json(result: dfleet.Result) -> dict[str, Any]:
    images = result.images or (dfleet.GeneratedImage(result.png, 0),)
    return {"request_id": result.request_id, "latency_ms": round(result.latency_ms, 1),
            "metadata": result.metadata,
            "images": [{"b64_png": base64.b64encode(i.png).decode(), "seed": i.seed}
                       for i in images]}
