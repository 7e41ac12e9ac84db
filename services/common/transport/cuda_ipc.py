"""CUDA IPC payloads: a pre-allocated device pool per exporter, shared once, opened once.

Producer: one pool per device, allocated on first use and exported with torch's own mechanism
(``UntypedStorage._share_cuda_``, as torch.multiprocessing does). Each tensor is copied into a
range of the pool; the copy is finished before the ref leaves, so the consumer needs no event.

Consumer: opens a pool's handle once (``UntypedStorage._new_shared_cuda``; ~127 ms the first
time on an H200, free afterwards), caches it by pool_id, and copies out of it.

Offsets on the wire are from the start of the IPC allocation, which may begin before the pool
when the caching allocator carved the pool out of a larger segment: the consumer opens the
allocation from its base (``pool_nbytes`` bytes) and needs no separate storage offset.
"""

from __future__ import annotations

import os
import secrets
import threading
import weakref

import torch

from diffusion.v1 import tensor_pb2
from services.common.transport.errors import TransportError
from services.common.transport.hostinfo import device_of_uuid, gpu_uuid
from services.common.transport.ranges import RangeAllocator

# Pools of this process by id: a consumer in the producer's own process cannot open its own
# IPC handle (CUDA refuses), so it reads the pool directly.
_LOCAL_POOLS: weakref.WeakValueDictionary[str, CudaPool] = weakref.WeakValueDictionary()


class CudaSlot:
    """A range of a pool pinned by one lease."""

    def __init__(self, pool: CudaPool, offset: int, nbytes: int) -> None:
        self.pool, self.offset, self.nbytes = pool, offset, nbytes

    def free(self) -> None:
        self.pool.free(self.offset, self.nbytes)


class CudaPool:
    def __init__(self, device: torch.device, nbytes: int) -> None:
        self.device = device
        self.pool_id = f"{os.getpid()}-{secrets.token_hex(8)}"
        self._lock = threading.Lock()
        self._ranges = RangeAllocator(nbytes)
        self._buffer: torch.Tensor | None = torch.empty(nbytes, dtype=torch.uint8, device=device)
        (
            dev_index,
            handle,
            storage_nbytes,
            storage_offset,
            ref_counter_handle,
            ref_counter_offset,
            event_handle,
            event_sync_required,
        ) = self._buffer.untyped_storage()._share_cuda_()
        self.base = int(storage_offset)
        self.descriptor = tensor_pb2.CudaIpc(
            pool_id=self.pool_id,
            handle=handle,
            device=int(dev_index),
            gpu_uuid=gpu_uuid(device),
            pool_nbytes=self.base + int(storage_nbytes),
            ref_counter_handle=ref_counter_handle,
            ref_counter_offset=int(ref_counter_offset),
            event_handle=event_handle,
            event_sync_required=bool(event_sync_required),
        )
        _LOCAL_POOLS[self.pool_id] = self

    @property
    def capacity(self) -> int:
        return self._ranges.capacity

    def put(self, tensor: torch.Tensor) -> tuple[CudaSlot, tensor_pb2.CudaIpc] | None:
        """Copy ``tensor`` (on this pool's device) into a free range; None when the pool is full."""
        nbytes = tensor.numel() * tensor.element_size()
        with self._lock:
            buffer = self._buffer
            offset = self._ranges.alloc(nbytes) if buffer is not None else None
        if buffer is None or offset is None:
            return None
        slot = CudaSlot(self, offset, nbytes)
        try:
            dst = buffer[offset : offset + nbytes].view(tensor.dtype).view(tensor.shape)
            with torch.cuda.device(self.device):
                dst.copy_(tensor)
                torch.cuda.current_stream(self.device).synchronize()
        except BaseException:
            slot.free()
            raise
        payload = tensor_pb2.CudaIpc()
        payload.CopyFrom(self.descriptor)
        payload.offset = self.base + offset
        payload.nbytes = nbytes
        return slot, payload

    def free(self, offset: int, nbytes: int) -> None:
        with self._lock:
            if self._buffer is not None:
                self._ranges.free(offset, nbytes)

    def local_view(self) -> tuple[torch.Tensor, int]:
        """The pool buffer and the wire offset of its first byte (for same-process readers)."""
        buffer = self._buffer
        if buffer is None:
            raise TransportError(f"CUDA pool {self.pool_id} is closed")
        return buffer, self.base

    def close(self) -> None:
        """Drop the pool; torch defers the actual free until every consumer closed its mapping."""
        with self._lock:
            self._buffer = None
        _LOCAL_POOLS.pop(self.pool_id, None)


class OpenedPools:
    """The consumer's cache of opened pools, by pool_id. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[str, tuple[torch.Tensor, int]] = {}

    def view(
        self, payload: tensor_pb2.CudaIpc, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """A view of the payload's bytes inside the producer's pool (no copy)."""
        buffer, base = self._get(payload)
        start = payload.offset - base
        if start < 0 or start + payload.nbytes > buffer.numel():
            raise TransportError(
                f"range [{payload.offset}, +{payload.nbytes}) outside CUDA pool {payload.pool_id}"
            )
        raw = buffer[start : start + payload.nbytes]
        return raw.view(dtype).reshape(shape)

    def close(self) -> None:
        with self._lock:
            self._pools.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pools)

    def _get(self, payload: tensor_pb2.CudaIpc) -> tuple[torch.Tensor, int]:
        with self._lock:
            cached = self._pools.get(payload.pool_id)
            if cached is not None:
                return cached
            local = _LOCAL_POOLS.get(payload.pool_id)
            opened = local.local_view() if local is not None else (_open(payload), 0)
            self._pools[payload.pool_id] = opened
            return opened


def _open(payload: tensor_pb2.CudaIpc) -> torch.Tensor:
    if not torch.cuda.is_available():
        raise TransportError("cuda_ipc ref but this process has no CUDA")
    device = (
        device_of_uuid(payload.gpu_uuid)
        if payload.gpu_uuid
        else torch.device("cuda", payload.device)
    )
    if device is None:
        raise TransportError(f"GPU {payload.gpu_uuid} is not visible to this process")
    try:
        storage = torch.UntypedStorage._new_shared_cuda(
            device.index,
            payload.handle,
            payload.pool_nbytes,
            0,
            payload.ref_counter_handle,
            payload.ref_counter_offset,
            payload.event_handle,
            payload.event_sync_required,
        )
    except RuntimeError as e:
        raise TransportError(f"cannot open CUDA pool {payload.pool_id}: {e}") from e
    base = torch.empty(0, dtype=torch.uint8, device=device)
    return base.set_(storage, 0, (payload.pool_nbytes,), (1,))
