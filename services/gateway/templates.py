"""Image templates for masked edits: what a template is, where it is kept, how an edit uses it.

A template is an image on an inpainting model, with its own prompt and a
*recipe* (seed, steps, guidance) that edits of it use unless they name
their own. Registering it encodes its prompt and its whole image once; the
gateway keeps both (and the image) in Redis under
``{p}template:{id}``, so every gateway can serve edits of it and attach to
each edit what a denoiser needs to record the template's activations.

An edit request names the template, a mask and a prompt; :func:`expand`
turns it into a plain inpainting request on the template's image, model and
recipe, which the usual validation then checks.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from diffusion.v1 import gateway_pb2
from services.common.errors import InvalidArgument, NotFound
from services.common.fleet_state import FleetState


@dataclass
class Template:
    template_id: str
    model: str
    width: int
    height: int
    seed: int
    steps: int
    guidance_scale: float
    prompt: str
    image_png: bytes = field(repr=False)
    conditioning: dict[str, torch.Tensor] = field(repr=False)           # its prompt's
    negative_conditioning: dict[str, torch.Tensor] | None = field(repr=False)
    image_moments: torch.Tensor = field(repr=False)  # VAE moments of the whole image
    cache_bytes: int = 0

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    def recipe(self) -> dict[str, object]:
        return {"seed": self.seed, "steps": self.steps, "guidance_scale": self.guidance_scale}


def new_template_id() -> str:
    return "tpl-" + uuid.uuid4().hex[:20]


_META = ("template_id", "model", "width", "height", "seed", "steps", "guidance_scale", "prompt",
         "cache_bytes")


class TemplateRegistry:
    """Templates in Redis: one hash per template (metadata, image, tensors)."""

    def __init__(self, fleet: FleetState) -> None:
        self.fleet = fleet

    def _key(self, template_id: str) -> str:
        return self.fleet.key("template", template_id)

    def put(self, template: Template) -> None:
        tensors = {"image_moments": template.image_moments.contiguous()}
        tensors.update({f"cond.{k}": v.contiguous() for k, v in template.conditioning.items()})
        tensors.update({f"negative.{k}": v.contiguous()
                        for k, v in (template.negative_conditioning or {}).items()})
        meta = {k: v for k, v in asdict(template).items() if k in _META}
        self.fleet.redis.hset(self._key(template.template_id), mapping={
            "meta": json.dumps(meta), "image": template.image_png,
            "tensors": save_tensors(tensors)})

    def get(self, template_id: str) -> Template:
        raw = self.fleet.redis.hgetall(self._key(template_id))
        if not raw:
            raise NotFound(f"no template {template_id!r}", field="template_id")
        fields = {k.decode(): v for k, v in raw.items()}  # type: ignore[union-attr]
        meta = json.loads(fields["meta"])
        tensors = load_tensors(fields["tensors"])
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        return Template(**meta, image_png=fields["image"], conditioning=part("cond."),
                        negative_conditioning=part("negative.") or None,
                        image_moments=tensors["image_moments"])

    def set_cache_bytes(self, template_id: str, cache_bytes: int) -> None:
        key = self._key(template_id)
        raw = self.fleet.redis.hget(key, "meta")
        if raw is None:
            return
        meta = json.loads(raw)  # type: ignore[arg-type]
        meta["cache_bytes"] = int(cache_bytes)
        self.fleet.redis.hset(key, "meta", json.dumps(meta))


def expand(request: gateway_pb2.GenerateRequest, template: Template
           ) -> gateway_pb2.GenerateRequest:
    """The edit as an inpainting request on the template's image, model and recipe."""
    if request.HasField("image"):
        raise InvalidArgument("an edit of a template takes the template's image; give a mask",
                              field="image")
    if request.model and request.model != template.model:
        raise InvalidArgument(f"template {template.template_id!r} is on model "
                              f"{template.model!r}, not {request.model!r}", field="model")
    if not request.HasField("mask"):
        raise InvalidArgument("an edit of a template needs a mask (white = repaint)",
                              field="mask")
    out = gateway_pb2.GenerateRequest()
    out.CopyFrom(request)
    out.model = template.model
    out.image.data = template.image_png
    out.seed = request.seed or template.seed
    out.num_inference_steps = request.num_inference_steps or template.steps
    if not request.has_guidance_scale:
        out.guidance_scale, out.has_guidance_scale = template.guidance_scale, True
    return out
