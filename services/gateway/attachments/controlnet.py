"""ControlNets of a request: validated and preprocessed here, run on ControlNet replicas
beside the denoiser (each ControlNet of a request on its own replica when there are enough)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from diffusion.v1 import denoiser_pb2, gateway_pb2
from services.common.errors import InvalidArgument
from services.common.fleet_state import ReplicaInfo
from services.common.model_store import ModelStore
from services.gateway import images
from services.gateway.attachments.base import AttachContext, Attachment
from services.gateway.generation import Generation
from services.gateway.placement import peer_of
from services.gateway.settings import GatewaySettings
from services.gateway.validation_rules import in_range


@dataclass(frozen=True)
class ControlNetPlan:
    name: str
    image: torch.Tensor
    scale: float
    guidance_start: float
    guidance_end: float


class ControlNetAttachment(Attachment):
    name = "controlnet"
    field = "controlnets"
    label = "controlnet"

    def __init__(self, controlnets: list[ControlNetPlan], stale: bool) -> None:
        self.controlnets = controlnets
        self.stale = stale
        self.chosen: list[ReplicaInfo] = []

    def nodes(self) -> list[tuple[str, str]]:
        return [("controlnet", c.name) for c in self.controlnets]

    def place(self, placer: object, denoiser: ReplicaInfo, wait_s: float) -> None:
        self.chosen = []
        for c in self.controlnets:
            self.chosen.append(placer.pick(  # type: ignore[attr-defined]
                "controlnet", c.name, denoiser.host_id,
                frozenset(r.replica_id for r in self.chosen), wait_s))

    def replicas(self) -> list[ReplicaInfo]:
        return list(self.chosen)

    def attach(self, addons: denoiser_pb2.Addons, ctx: AttachContext) -> None:
        inline = ctx.calls.inline_max_bytes
        addons.controlnet.CopyFrom(denoiser_pb2.ControlNets(stale=self.stale, controlnets=[
            denoiser_pb2.ControlNetAttachment(
                name=c.name, address=r.address, peer=peer_of(r, inline),
                cond_image=ctx.export(c.image), scale=c.scale,
                guidance_start=c.guidance_start, guidance_end=c.guidance_end)
            for c, r in zip(self.controlnets, self.chosen, strict=True)]))

    def report(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return {"denoise_controlnet_wait_ms": metadata.get("controlnet_wait_ms", "0")}


class ControlNetKind:
    def validate(self, req: gateway_pb2.GenerateRequest, gen: Generation, store: ModelStore,
                 limits: GatewaySettings) -> ControlNetAttachment | None:
        if len(req.controlnets) > limits.max_controlnets:
            raise InvalidArgument(f"at most {limits.max_controlnets}", field="controlnets")
        if req.controlnets and gen.mask is not None:
            raise InvalidArgument("ControlNets are not served with inpainting models",
                                  field="controlnets")
        plans = []
        vsf = gen.vae_scale_factor
        family = store.family(gen.model)
        for i, c in enumerate(req.controlnets):
            where = f"controlnets[{i}]"
            store.get(c.name, ("controlnet",), field=f"{where}.name")
            if not family.fits_controlnet(store.controlnet_config(c.name),
                                          store.denoiser_config(gen.model)):
                raise InvalidArgument(f"ControlNet {c.name!r} does not fit {family.name} model "
                                      f"{gen.model!r}", field=f"{where}.name")
            if not c.HasField("image"):
                raise InvalidArgument("a control image is required", field=f"{where}.image")
            picture = images.decode(c.image.data, f"{where}.image", limits.max_image_bytes)
            scale = c.scale or 1.0
            in_range(scale, 0.0, 10.0, f"{where}.scale")
            end = c.guidance_end or 1.0
            in_range(c.guidance_start, 0.0, 1.0, f"{where}.guidance_start")
            in_range(end, 0.0, 1.0, f"{where}.guidance_end")
            if c.guidance_start >= end:
                raise InvalidArgument(f"guidance_start={c.guidance_start} must be below "
                                      f"guidance_end={end}", field=f"{where}.guidance_start")
            plans.append(ControlNetPlan(
                c.name, images.control_image(picture, gen.width, gen.height, vsf), scale,
                c.guidance_start, end))
        return (ControlNetAttachment(plans, req.approximations.stale_controlnet)
                if plans else None)
