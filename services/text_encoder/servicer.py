"""gRPC <-> TextEncoderEngine; protos in, domain types to the engine, protos out."""

from __future__ import annotations

import grpc

from diffusion.v1 import text_encoder_pb2, text_encoder_pb2_grpc
from services.common.input_checks import check_prompts
from services.common.server import ServiceRuntime
from services.common.telemetry.metrics import TEXT_ENCODE_SECONDS
from services.text_encoder.engine import TextEncoderEngine


class TextEncoderServicer(text_encoder_pb2_grpc.TextEncoderServicer):
    def __init__(self, engine: TextEncoderEngine, runtime: ServiceRuntime) -> None:
        self.engine = engine
        self.runtime = runtime

    def Encode(self, request: text_encoder_pb2.EncodeRequest,
               context: grpc.ServicerContext) -> text_encoder_pb2.EncodeResponse:
        check_prompts(request.prompts)
        with TEXT_ENCODE_SECONDS.labels(request.model).time():
            embeds = self.engine.encode(request.model, list(request.prompts))
        export = self.runtime.exporter.export
        return text_encoder_pb2.EncodeResponse(embeddings=[
            export(e, request.peer, request_id=request.request_id) for e in embeds])
