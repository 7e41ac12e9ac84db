"""ControlNets of a request: validated and preprocessed here, run on ControlNet replicas
beside the denoiser (each ControlNet of a request on its own replica when there are enough).

A Flux ControlNet reads the control image's latents: the image is preprocessed as an
image-to-image input ([-1, 1]) and VAE-encoded here, and the denoiser gets its moments, which
it samples with the request's generators before the initial noise, as the Flux ControlNet
pipeline does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from diffusion.v1 import denoiser_pb2, gateway_pb2, tensor_pb2, vae_pb2, vae_pb2_grpc
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
    latent: bool = False      # the ControlNet reads the image's latents (Flux)


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
                cond_image=None if c.latent else ctx.export(c.image),
                cond_moments=_moments(c.image, ctx) if c.latent else None, scale=c.scale,
                guidance_start=c.guidance_start, guidance_end=c.guidance_end)
            for c, r in zip(self.controlnets, self.chosen, strict=True)]))

    def report(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return {"denoise_controlnet_wait_ms": metadata.get("controlnet_wait_ms", "0")}


def _moments(image: torch.Tensor, ctx: AttachContext) -> tensor_pb2.TensorRef:
    """The VAE's moments of ``image``, exported by the VAE for the denoiser."""
    calls = ctx.calls
    vae = vae_pb2_grpc.VaeStub(calls.channel(ctx.vae))
    encoded = calls.unary("vae", vae.Encode, vae_pb2.VaeEncodeRequest(
        request_id=calls.request_id, model=ctx.generation.model, peer=ctx.denoiser_peer,
        image=calls.exporter.export(image, peer_of(ctx.vae, calls.inline_max_bytes),
                                    request_id=calls.request_id)))
    moments: tensor_pb2.TensorRef = encoded.moments
    return moments


class ControlNetKind:
    def validate(self, req: gateway_pb2.GenerateRequest, gen: Generation, store: ModelStore,
                 limits: GatewaySettings) -> ControlNetAttachment | None:
        if len(req.controlnets) > limits.max_controlnets:
            raise InvalidArgument(f"at most {limits.max_controlnets}", field="controlnets")
        if req.controlnets and gen.mask is not None:
            raise InvalidArgument("ControlNets are not served with inpainting models",
                                  field="controlnets")
        latent = store.family(gen.model).controlnets_read_latents
        if req.controlnets and latent and gen.init_image is not None:
            raise InvalidArgument(f"{gen.family} ControlNets are served with text-to-image "
                                  "requests only", field="controlnets")
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
            prepare = images.init_image if latent else images.control_image
            plans.append(ControlNetPlan(c.name, prepare(picture, gen.width, gen.height, vsf),
                                        scale, c.guidance_start, end, latent))
        return (ControlNetAttachment(plans, req.approximations.stale_controlnet)
                if plans else None)
