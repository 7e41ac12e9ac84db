"""A prompt's conditioning (named tensors) on the wire: ``Conditioning`` <-> ``dict``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion.v1 import tensor_pb2

Export = Callable[[torch.Tensor], tensor_pb2.TensorRef]
Read = Callable[[tensor_pb2.TensorRef, str], torch.Tensor | None]


def to_proto(conditioning: dict[str, torch.Tensor], export: Export) -> tensor_pb2.Conditioning:
    return tensor_pb2.Conditioning(tensors={k: export(v) for k, v in conditioning.items()})


def from_proto(message: tensor_pb2.Conditioning, read: Read, field: str
               ) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for key, ref in message.tensors.items():
        tensor = read(ref, f"{field}.{key}")
        if tensor is not None:
            found[key] = tensor
    return found
