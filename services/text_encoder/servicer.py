"""gRPC <-> TextEncoderEngine; protos in, domain types to the engine, protos out."""

from __future__ import annotations

import grpc
import torch

from diffusion.v1 import tensor_pb2, text_encoder_pb2, text_encoder_pb2_grpc
from services.common import conditioning_wire
from services.common.families import PromptInput
from services.common.input_checks import check_prompts
from services.common.server import ServiceRuntime
from services.common.telemetry.metrics import TEXT_ENCODE_SECONDS
from services.text_encoder.engine import TextEncoderEngine
from services.text_encoder.loras import TextLoraLayers, TextLoraSpec


class TextEncoderServicer(text_encoder_pb2_grpc.TextEncoderServicer):
    def __init__(self, engine: TextEncoderEngine, runtime: ServiceRuntime,
                 loras: TextLoraLayers) -> None:
        self.engine = engine
        self.runtime = runtime
        self.loras = loras

    def Encode(self, request: text_encoder_pb2.EncodeRequest,
               context: grpc.ServicerContext) -> text_encoder_pb2.EncodeResponse:
        check_prompts([p.text for p in request.inputs], field="inputs")
        prompts = [PromptInput(p.text, p.zeros) for p in request.inputs]
        loras = self.loras.load([TextLoraSpec(lo.name, lo.scale, lo.address)
                                 for lo in request.loras], request.request_id)
        with TEXT_ENCODE_SECONDS.labels(request.model).time():
            encoded = self.engine.encode(request.model, prompts, loras)

        def export(tensor: torch.Tensor) -> tensor_pb2.TensorRef:
            return self.runtime.exporter.export(tensor, request.peer,
                                                request_id=request.request_id)
        return text_encoder_pb2.EncodeResponse(
            prompts=[conditioning_wire.to_proto(c, export) for c in encoded])
