"""gRPC <-> LoraCacheEngine."""

from __future__ import annotations

import grpc

from diffusion.v1 import lora_cache_pb2, lora_cache_pb2_grpc, tensor_pb2
from services.common.server import ServiceRuntime
from services.common.transport import host_id
from services.lora_cache.engine import LoraCacheEngine
from services.lora_cache.host_tier import HostLora


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
        lora = self.engine.fetch(request.lora)
        return lora_cache_pb2.FetchLoraResponse(
            tensors=[lora_cache_pb2.NamedTensor(name=key, tensor=self._ref(lora, key, request))
                     for key in lora.layout],
            metadata=lora.metadata)

    def _ref(self, lora: HostLora, key: str,
             request: lora_cache_pb2.FetchLoraRequest) -> tensor_pb2.TensorRef:
        """Same host: the shared segment itself. Elsewhere: a copy, as the transport sends it."""
        if request.peer.host_id == host_id():
            return lora.shm_ref(key)
        return self.runtime.exporter.export(lora.tensor(key), request.peer,
                                            request_id=request.request_id)
