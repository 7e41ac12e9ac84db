"""gRPC <-> ArEmbedEngine; protos in, domain types to the engine, protos out."""

from __future__ import annotations

import grpc

from diffusion.v1 import ar_embed_pb2, ar_embed_pb2_grpc
from services.ar_embed.engine import ArEmbedEngine
from services.common.errors import InvalidArgument
from services.common.input_checks import check_prompts
from services.common.server import ServiceRuntime


class ArEmbedServicer(ar_embed_pb2_grpc.ArEmbedServicer):
    def __init__(self, engine: ArEmbedEngine, runtime: ServiceRuntime) -> None:
        self.engine = engine
        self.runtime = runtime

    def Embed(self, request: ar_embed_pb2.ArEmbedRequest,
              context: grpc.ServicerContext) -> ar_embed_pb2.ArEmbedResponse:
        check_prompts([request.prompt], field="prompt")
        embeddings = self.engine.embed(request.model, request.prompt)
        return ar_embed_pb2.ArEmbedResponse(embeddings=self.runtime.exporter.export(
            embeddings, request.peer, request_id=request.request_id))

    def Adapt(self, request: ar_embed_pb2.EmbedAdaptRequest,
              context: grpc.ServicerContext) -> ar_embed_pb2.EmbedAdaptResponse:
        if not request.embeddings.ByteSize():
            raise InvalidArgument("embeddings are required", field="embeddings")
        try:
            embeddings = self.runtime.importer.load(request.embeddings)
        except Exception as exc:
            raise InvalidArgument(f"cannot read tensor: {exc}", field="embeddings") from exc
        adapted = self.engine.adapt(request.adapter, embeddings)
        return ar_embed_pb2.EmbedAdaptResponse(embeddings=self.runtime.exporter.export(
            adapted, request.peer, request_id=request.request_id))
