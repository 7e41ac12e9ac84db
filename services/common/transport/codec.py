"""Wire dtypes and the inline payload: torch dtype <-> DType, tensor <-> raw bytes.

Bytes are the tensor's contiguous memory in the host's byte order (little-endian on every
machine we deploy to). numpy is avoided on purpose: it has no bfloat16, so every conversion goes
through torch's own buffer views.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from typing import cast

import torch

from diffusion.v1 import tensor_pb2
from services.common.transport.errors import TransportError

_TO_TORCH: dict[int, torch.dtype] = {
    tensor_pb2.DTYPE_FLOAT32: torch.float32,
    tensor_pb2.DTYPE_FLOAT16: torch.float16,
    tensor_pb2.DTYPE_BFLOAT16: torch.bfloat16,
    tensor_pb2.DTYPE_FLOAT64: torch.float64,
    tensor_pb2.DTYPE_INT8: torch.int8,
    tensor_pb2.DTYPE_INT16: torch.int16,
    tensor_pb2.DTYPE_INT32: torch.int32,
    tensor_pb2.DTYPE_INT64: torch.int64,
    tensor_pb2.DTYPE_UINT8: torch.uint8,
    tensor_pb2.DTYPE_BOOL: torch.bool,
}
_TO_WIRE: dict[torch.dtype, int] = {dt: wire for wire, dt in _TO_TORCH.items()}


def wire_dtype(dtype: torch.dtype) -> tensor_pb2.DType:
    """The DType enum value of a torch dtype; ValueError for dtypes the wire cannot carry."""
    try:
        return cast(tensor_pb2.DType, _TO_WIRE[dtype])
    except KeyError:
        raise ValueError(f"dtype {dtype} has no wire DType") from None


def torch_dtype(wire: int) -> torch.dtype:
    """The torch dtype of a DType enum value; TransportError for unknown or unspecified ones."""
    try:
        return _TO_TORCH[wire]
    except KeyError:
        raise TransportError(f"unknown dtype {wire} in TensorRef") from None


def ref_layout(ref: tensor_pb2.TensorRef) -> tuple[torch.dtype, tuple[int, ...], int]:
    """dtype, shape and the byte count that dtype and shape demand, validated."""
    dtype = torch_dtype(ref.dtype)
    shape = tuple(int(d) for d in ref.shape)
    if any(d < 0 for d in shape):
        raise TransportError(f"negative dimension in shape {list(shape)}")
    return dtype, shape, math.prod(shape) * _itemsize(dtype)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def new_ref(tensor: torch.Tensor) -> tensor_pb2.TensorRef:
    """A ref carrying only dtype and shape; the caller sets the payload."""
    return tensor_pb2.TensorRef(dtype=wire_dtype(tensor.dtype), shape=list(tensor.shape))


def encode_inline(tensor: torch.Tensor) -> bytes:
    """The tensor's elements as raw bytes, in row-major order whatever its strides or device."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def decode_inline(data: bytes, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
    """A new CPU tensor holding a copy of ``data`` (which must be exactly the right size)."""
    if not data:
        return torch.empty(tuple(shape), dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(tuple(shape))


def copy_host(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Copies ``src`` into CPU ``dst`` (same dtype and shape) and returns ``dst``.

    Contiguous tensors are copied as bytes, which starts no OpenMP region on the
    calling thread (see :mod:`services.common.compute` for why that matters).
    """
    if dst.numel() == 0:
        return dst
    if src.device.type == "cpu" and src.is_contiguous() and dst.is_contiguous():
        dst.reshape(-1).view(torch.uint8).numpy()[:] = src.reshape(-1).view(torch.uint8).numpy()
    else:
        dst.copy_(src)
    return dst


def view_buffer(
    buffer: mmap.mmap | memoryview | bytearray,
    offset: int,
    dtype: torch.dtype,
    shape: Sequence[int],
) -> torch.Tensor:
    """A tensor sharing ``buffer``'s memory from ``offset``: no copy, valid while it lives."""
    numel = math.prod(shape)
    if numel == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    flat = torch.frombuffer(buffer, dtype=dtype, count=numel, offset=offset)
    return flat.reshape(tuple(shape))
