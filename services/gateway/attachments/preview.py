"""Previews: the denoiser sends the latents with each step, decoded here into a PNG."""

from __future__ import annotations

from diffusion.v1 import denoiser_pb2, gateway_pb2, vae_pb2, vae_pb2_grpc
from services.common.model_store import ModelStore
from services.common.transport import local_peer
from services.gateway import images
from services.gateway.attachments.base import AttachContext, Attachment
from services.gateway.generation import Generation
from services.gateway.settings import GatewaySettings


class PreviewAttachment(Attachment):
    name = "preview"
    field = "preview"

    def attach(self, addons: denoiser_pb2.Addons, ctx: AttachContext) -> None:
        addons.preview.CopyFrom(denoiser_pb2.Preview(every=1))

    def progress(self, event: denoiser_pb2.DenoiseProgress, out: gateway_pb2.Progress,
                 ctx: AttachContext) -> None:
        if not event.HasField("preview_latents"):
            return
        calls = ctx.calls
        vae = vae_pb2_grpc.VaeStub(calls.channel(ctx.vae))
        decoded = calls.unary("vae", vae.Decode, vae_pb2.VaeDecodeRequest(
            request_id=calls.request_id, model=ctx.generation.model, peer=local_peer(),
            latents=event.preview_latents))
        out.preview.data = images.to_png(images.to_pixels(calls.importer.load(decoded.image)))


class PreviewKind:
    def validate(self, req: gateway_pb2.GenerateRequest, gen: Generation, store: ModelStore,
                 limits: GatewaySettings) -> PreviewAttachment | None:
        return PreviewAttachment() if req.preview else None
