"""Template edits (masked edits of a registered image): the gateway's side.

For an edit of a registered template this attachment picks the denoiser (mask-aware,
:mod:`services.gateway.edit_placement`), attaches the template (its id, the activation-cache
switch and the template's encoded prompt and image, from which a denoiser without the
template's record records it), moves the edit's remaining work down as steps complete, and at
the end learns from the measured step time and notes the template's cache size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from diffusion.v1 import denoiser_pb2, gateway_pb2
from services.common import conditioning_wire
from services.common.errors import InvalidArgument
from services.common.fleet_state import ReplicaInfo
from services.common.model_store import ModelStore
from services.gateway.attachments.base import AttachContext, Attachment
from services.gateway.edit_placement import EditDemand, EditPlacer
from services.gateway.generation import Generation
from services.gateway.settings import GatewaySettings
from services.gateway.templates import Template, TemplateRegistry

log = logging.getLogger("dfleet.gateway.edits")


def region_ratio(mask: torch.Tensor, vae_scale_factor: int, halo: int) -> float:
    """Fraction of latent tokens an edit computes: the mask's tokens dilated by ``halo``."""
    tokens = F.max_pool2d((mask > 0.5).float(), vae_scale_factor)
    if halo:
        tokens = F.max_pool2d(tokens, 2 * halo + 1, stride=1, padding=halo)
    return float(tokens.mean())


class TemplateEditAttachment(Attachment):
    name = "template_edit"
    field = "template_id"

    def __init__(self, generation: Generation, template: Template, activation_cache: bool,
                 placer: EditPlacer, registry: TemplateRegistry, halo: int) -> None:
        assert generation.mask is not None
        self.generation = generation
        self.template = template
        self.activation_cache = activation_cache
        self.placer = placer
        self.registry = registry
        cached = activation_cache and template.cache_bytes > 0
        self.demand = EditDemand(
            ratio=region_ratio(generation.mask, generation.vae_scale_factor, halo),
            cached=cached, steps=generation.steps,
            cache_bytes_per_step=template.cache_bytes / max(template.steps, 1) if cached else 0.0)
        self.cost_ms = placer.costs.cost_ms(self.demand)
        if activation_cache and not cached:
            self.cost_ms *= 2  # the template's recording run shares the edit's batch
        self.booked: str = ""  # the replica its work is booked on

    def choose_denoiser(self, replicas: Callable[[], list[ReplicaInfo]]) -> ReplicaInfo | None:
        """Picks the edit's denoiser and books its predicted work there."""
        chosen = self.placer.reserve(replicas(), self.generation.model,
                                     self.generation.request_id, self.cost_ms)
        self.booked = chosen.replica_id
        return chosen

    def attach(self, addons: denoiser_pb2.Addons, ctx: AttachContext) -> None:
        template = self.template

        negative = template.negative_conditioning if ctx.generation.do_cfg else None
        addons.template_edit.CopyFrom(denoiser_pb2.TemplateEditSpec(
            template_id=template.template_id, activation_cache=self.activation_cache,
            conditioning=conditioning_wire.to_proto(template.conditioning, ctx.export),
            negative_conditioning=conditioning_wire.to_proto(negative, ctx.export)
            if negative is not None else None,
            image_moments=ctx.export(template.image_moments)))

    def progress(self, event: denoiser_pb2.DenoiseProgress, out: gateway_pb2.Progress,
                 ctx: AttachContext) -> None:
        if self.booked and event.total_steps:
            remaining = self.cost_ms * (1 - event.step / event.total_steps)
            self.placer.ledger.set(self.booked, self.generation.request_id, remaining)

    def report(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """Learns from the finished edit; the metadata it adds to the result."""
        mode = metadata.get("edit_mode", "")
        cache_bytes = int(metadata.get("cache_bytes", "0"))
        if cache_bytes and mode in ("record", "exact"):
            self.registry.set_cache_bytes(self.template.template_id, cache_bytes)
        batch_peak, steps = metadata.get("denoise_batch_peak"), metadata.get("steps", "0")
        if self.booked and batch_peak == "1" and int(steps):
            measured = EditDemand(self.demand.ratio, mode == "cached", self.demand.steps,
                                  self.demand.cache_bytes_per_step)
            self.placer.costs.observe(measured,
                                      float(metadata["denoise_run_ms"]) / int(steps))
        return {"template_id": self.template.template_id, "edit_mode": mode,
                "cache_bytes": str(cache_bytes), "edit_region_ratio": f"{self.demand.ratio:.4f}"}

    def close(self) -> None:
        if self.booked:
            self.placer.ledger.remove(self.booked, self.generation.request_id)


class TemplateEditKind:
    def __init__(self, registry: TemplateRegistry, placer: EditPlacer, halo: int = 1) -> None:
        self.registry = registry
        self.placer = placer
        self.halo = halo

    def validate(self, req: gateway_pb2.GenerateRequest, gen: Generation, store: ModelStore,
                 limits: GatewaySettings) -> TemplateEditAttachment | None:
        cache = req.approximations.activation_cache
        if not req.template_id:
            if cache:
                raise InvalidArgument("the activation cache serves edits of a registered "
                                      "template", field="approximations.activation_cache")
            return None
        return TemplateEditAttachment(gen, self.registry.get(req.template_id), cache,
                                      self.placer, self.registry, self.halo)
