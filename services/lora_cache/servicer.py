"""gRPC <-> LoraCacheEngine."""

from __future__ import annotations

import grpc

from diffusion.v1 import lora_cache_pb2, lora_cache_pb2_grpc
from services.common.server import ServiceRuntime
from services.lora_cache.engine import LoraCacheEngine


class LoraCacheServicer(lora_cache_pb2_grpc.LoraCacheServicer):
    def __init__(self, engine: LoraCacheEngine, runtime: ServiceRuntime) -> None:
        self.engine = engine
        self.runtime = runtime

    def Prepare(self, request: lora_cache_pb2.PrepareLoraRequest,
                context: grpc.ServicerContext) -> lora_cache_pb2.PrepareLoraResponse:
        results = [self.engine.prepare(name) for name in request.loras]
        return lora_cache_pb2.PrepareLoraResponse(loras=[
            lora_cache_pb2.LoraStatus(name=r.name, nbytes=r.nbytes, hit=r.hit, load_ms=r.load_ms)
            for r in results])

    def Fetch(self, request: lora_cache_pb2.FetchLoraRequest,
              context: grpc.ServicerContext) -> lora_cache_pb2.FetchLoraResponse:
        weights = self.engine.get(request.lora)
        export = self.runtime.exporter.export
        return lora_cache_pb2.FetchLoraResponse(
            tensors=[lora_cache_pb2.NamedTensor(
                name=key, tensor=export(t, request.peer, request_id=request.request_id))
                for key, t in weights.tensors.items()],
            metadata=weights.metadata)
