"""Producer side: turn tensors into TensorRefs, choosing the cheapest payload kind per peer."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable

import torch

from diffusion.v1 import tensor_pb2
from services.common.transport import metrics
from services.common.transport.codec import (
    copy_host,
    encode_inline,
    new_ref,
    view_buffer,
)
from services.common.transport.cuda_ipc import CudaPool
from services.common.transport.hostinfo import gpu_uuid, host_id, same_gpu
from services.common.transport.leases import LeaseTable, Slot, TensorLease
from services.common.transport.shm import reap_orphans
from services.common.transport.shm_pool import SegmentPool

DEFAULT_SHM_IDLE_BUDGET_BYTES = 256 << 20
DEFAULT_CUDA_POOL_BYTES = 256 << 20

log = logging.getLogger(__name__)
_reaped_once = threading.Event()


class TensorExporter:
    """Owns this process's shared-memory segments and CUDA pools and the leases on them.

    Payload per peer: another host (or no peer) -> inline; same host -> host_shm for tensors
    larger than the threshold, inline otherwise; a CUDA tensor for a peer on the same GPU ->
    cuda_ipc whatever its size. A kind that cannot be used falls back to the next one and is
    counted in ``dfleet_transport_fallbacks_total``.

    ``inline_max_bytes``: the threshold, unless the peer names its own; 1 means "share every
    non-empty tensor".
    Thread-safe: engines export while the TensorLeases servicer releases.
    """

    def __init__(
        self,
        owner_address: str,
        *,
        default_ttl_s: float = 120.0,
        inline_max_bytes: int = 150_000,
        role: str = "",
        shm_idle_budget_bytes: int = DEFAULT_SHM_IDLE_BUDGET_BYTES,
        cuda_pool_bytes: int = DEFAULT_CUDA_POOL_BYTES,
    ) -> None:
        self.owner_address = owner_address
        self.default_ttl_s = default_ttl_s
        self.inline_max_bytes = inline_max_bytes
        self.role = role
        self.cuda_pool_bytes = cuda_pool_bytes
        if not _reaped_once.is_set():
            _reaped_once.set()
            reap_orphans()
        self._leases = LeaseTable()
        self._shm = SegmentPool(role, shm_idle_budget_bytes)
        self._cuda_pools: dict[int, CudaPool] = {}
        self._cuda_lock = threading.Lock()
        self._closed = False
        # Unlinks the segments at interpreter exit even if close() is never called.
        self._finalizer = weakref.finalize(self, self._shm.close)

    @property
    def segment_prefix(self) -> str:
        """Every shared-memory segment this exporter creates is named with this prefix."""
        return self._shm.prefix

    def export(
        self,
        tensor: torch.Tensor,
        peer: tensor_pb2.PeerInfo | None = None,
        *,
        request_id: str = "",
        ttl_s: float | None = None,
    ) -> tensor_pb2.TensorRef:
        """A ref to ``tensor``'s current values; later writes to ``tensor`` do not show through."""
        if self._closed:
            raise RuntimeError("exporter is closed")
        tensor = tensor.detach()
        nbytes = tensor.numel() * tensor.element_size()
        ref = new_ref(tensor)
        self.reclaim_expired()
        same_host = peer is not None and peer.host_id == host_id()
        expires_at = time.time() + (self.default_ttl_s if ttl_s is None else ttl_s)
        if tensor.is_cuda and nbytes:
            if not same_host or peer is None:
                self._fallback("other_host")
            elif not peer.gpu_uuid:
                self._fallback("peer_without_gpu")
            elif not same_gpu(peer.gpu_uuid, gpu_uuid(tensor.device)):
                self._fallback("other_gpu")
            elif self._put_cuda(ref, tensor, request_id, expires_at):
                return self._count(ref, "cuda_ipc", nbytes)
        shared = same_host and peer is not None and nbytes > self._threshold(peer)
        if shared and self._put_shm(ref, tensor, request_id, expires_at):
            return self._count(ref, "host_shm", nbytes)
        ref.inline = encode_inline(tensor)
        return self._count(ref, "inline", nbytes)

    def release(self, lease_ids: Iterable[str]) -> int:
        """End the named leases and free their memory; unknown ids are counted, not raised."""
        ended, unknown = self._leases.end(lease_ids)
        if unknown:
            metrics.UNKNOWN_RELEASES.labels(self.role).inc(unknown)
        released = self._free(ended, "released")
        self.reclaim_expired()
        return released

    def release_request(self, request_id: str) -> int:
        """End every lease granted for ``request_id``: call it when the request ends."""
        return self._free(self._leases.end_request(request_id), "request_done")

    def reclaim_expired(self, now: float | None = None) -> int:
        """End leases past their expiry (``now``: unix seconds, default the current time)."""
        now = time.time() if now is None else now
        next_expiry = self._leases.next_expiry()
        if next_expiry is None or next_expiry > now:
            return 0
        return self._free(self._leases.end_expired(now), "expired")

    def active_leases(self) -> int:
        return len(self._leases)

    def close(self) -> None:
        """End every lease, unlink every segment, drop the CUDA pools. Safe to call twice."""
        self._closed = True
        self._free(self._leases.end_all(), "closed")
        self._finalizer()
        with self._cuda_lock:
            pools = list(self._cuda_pools.values())
            self._cuda_pools.clear()
        for pool in pools:
            pool.close()

    def _threshold(self, peer: tensor_pb2.PeerInfo) -> int:
        threshold = peer.inline_max_bytes or self.inline_max_bytes
        return 0 if threshold == 1 else threshold

    def _put_shm(
        self, ref: tensor_pb2.TensorRef, tensor: torch.Tensor, request_id: str, expires_at: float
    ) -> bool:
        nbytes = tensor.numel() * tensor.element_size()
        try:
            slot = self._shm.acquire(nbytes)
        except OSError as e:
            log.warning("shared memory refused %d bytes (%s); sending inline", nbytes, e)
            self._fallback("shm_error")
            return False
        try:
            copy_host(view_buffer(slot.segment.buffer, 0, tensor.dtype, tensor.shape), tensor)
        except BaseException:
            slot.free()
            raise
        self._grant(slot, request_id, expires_at, ref)
        ref.host_shm.segment = slot.segment.name
        ref.host_shm.offset = 0
        ref.host_shm.nbytes = nbytes
        return True

    def _put_cuda(
        self, ref: tensor_pb2.TensorRef, tensor: torch.Tensor, request_id: str, expires_at: float
    ) -> bool:
        try:
            placed = self._cuda_pool(tensor.device).put(tensor)
        except RuntimeError as e:
            log.warning("CUDA IPC export failed (%s); falling back to shared memory", e)
            self._fallback("cuda_ipc_error")
            return False
        if placed is None:
            self._fallback("cuda_pool_full")
            return False
        slot, payload = placed
        self._grant(slot, request_id, expires_at, ref)
        ref.cuda_ipc.CopyFrom(payload)
        return True

    def _cuda_pool(self, device: torch.device) -> CudaPool:
        index = device.index if device.index is not None else torch.cuda.current_device()
        with self._cuda_lock:
            if self._closed:
                raise RuntimeError("exporter is closed")
            pool = self._cuda_pools.get(index)
            if pool is None:
                pool = CudaPool(torch.device("cuda", index), self.cuda_pool_bytes)
                self._cuda_pools[index] = pool
            return pool

    def _grant(
        self, slot: Slot, request_id: str, expires_at: float, ref: tensor_pb2.TensorRef
    ) -> TensorLease:
        lease = self._leases.grant(slot, request_id, expires_at)
        metrics.ACTIVE_LEASES.labels(self.role).inc()
        ref.lease.lease_id = lease.lease_id
        ref.lease.expires_unix_ms = int(expires_at * 1000)
        ref.lease.owner = self.owner_address
        return lease

    def _free(self, ended: list[TensorLease], reason: str) -> int:
        for lease in ended:
            lease.slot.free()
        if ended:
            metrics.ACTIVE_LEASES.labels(self.role).dec(len(ended))
            metrics.LEASES_ENDED.labels(self.role, reason).inc(len(ended))
        return len(ended)

    def _fallback(self, reason: str) -> None:
        metrics.FALLBACKS.labels(self.role, reason).inc()

    def _count(self, ref: tensor_pb2.TensorRef, kind: str, nbytes: int) -> tensor_pb2.TensorRef:
        metrics.EXPORTED_BYTES.labels(self.role, kind).inc(nbytes)
        metrics.EXPORTED_TENSORS.labels(self.role, kind).inc()
        return ref
