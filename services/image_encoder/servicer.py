"""gRPC <-> ImageEncoderEngine; protos in, domain types to the engine, protos out."""

from __future__ import annotations

import grpc

from diffusion.v1 import image_encoder_pb2, image_encoder_pb2_grpc
from services.common.server import ServiceRuntime
from services.image_encoder.engine import ImageEncoderEngine


class ImageEncoderServicer(image_encoder_pb2_grpc.ImageEncoderServicer):
    def __init__(self, engine: ImageEncoderEngine, runtime: ServiceRuntime) -> None:
        self.engine = engine
        self.runtime = runtime

    def Encode(self, request: image_encoder_pb2.ImageEncodeRequest,
               context: grpc.ServicerContext) -> image_encoder_pb2.ImageEncodeResponse:
        embeds = self.engine.encode(request.ip_adapter, request.image)
        return image_encoder_pb2.ImageEncodeResponse(image_embeds=self.runtime.exporter.export(
            embeds, request.peer, request_id=request.request_id))
