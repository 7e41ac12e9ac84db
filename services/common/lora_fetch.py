"""A LoRA's converted layers, read from the node's LoRA cache service (shared memory on the same
host, a copy elsewhere); for every role that merges LoRA layers."""

from __future__ import annotations

import grpc

from diffusion.v1 import lora_cache_pb2, lora_cache_pb2_grpc
from services.common.channels import ChannelPool
from services.common.errors import from_rpc_error
from services.common.lora_files import unpack
from services.common.lora_merge import Layers
from services.common.transport import TensorImporter, local_peer

FETCH_TIMEOUT_S = 60.0


def fetch_layers(channels: ChannelPool, importer: TensorImporter, address: str, name: str,
                 request_id: str) -> dict[str, Layers]:
    """Component (unet, text_encoder, ...) -> module -> layer of LoRA ``name``."""
    stub = lora_cache_pb2_grpc.LoraCacheStub(channels.get(address))
    try:
        response = stub.Fetch(lora_cache_pb2.FetchLoraRequest(
            request_id=request_id, lora=name, peer=local_peer()), timeout=FETCH_TIMEOUT_S)
    except grpc.RpcError as err:
        raise from_rpc_error(err, f"lora cache {address}") from err
    tensors = {nt.name: importer.load(nt.tensor) for nt in response.tensors}
    return unpack(tensors, dict(response.metadata))
