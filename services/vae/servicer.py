"""gRPC <-> VaeEngine."""

from __future__ import annotations

import grpc

from diffusion.v1 import vae_pb2, vae_pb2_grpc
from services.common.input_checks import check_image_shape, check_latent_shape
from services.common.server import ServiceRuntime
from services.common.telemetry.metrics import VAE_DECODE_SECONDS, VAE_ENCODE_SECONDS
from services.vae.engine import VaeEngine


class VaeServicer(vae_pb2_grpc.VaeServicer):
    def __init__(self, engine: VaeEngine, runtime: ServiceRuntime) -> None:
        self.engine = engine
        self.runtime = runtime

    def Encode(self, request: vae_pb2.VaeEncodeRequest,
               context: grpc.ServicerContext) -> vae_pb2.VaeEncodeResponse:
        check_image_shape(request.image.shape, "image")
        self.engine.store.pipeline(request.model)
        image = self.runtime.importer.load(request.image)
        with VAE_ENCODE_SECONDS.labels(request.model).time():
            moments = self.engine.encode(request.model, image)
        return vae_pb2.VaeEncodeResponse(moments=self.runtime.exporter.export(
            moments, request.peer, request_id=request.request_id))

    def Decode(self, request: vae_pb2.VaeDecodeRequest,
               context: grpc.ServicerContext) -> vae_pb2.VaeDecodeResponse:
        check_latent_shape(request.latents.shape, "latents")
        self.engine.store.pipeline(request.model)
        latents = self.runtime.importer.load(request.latents)
        with VAE_DECODE_SECONDS.labels(request.model).time():
            image = self.engine.decode(request.model, latents)
        return vae_pb2.VaeDecodeResponse(image=self.runtime.exporter.export(
            image, request.peer, request_id=request.request_id))
