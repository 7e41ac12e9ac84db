"""Consumer side: read TensorRefs into tensors the caller owns, and release their leases."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import grpc
import torch

from diffusion.v1 import tensor_pb2, tensor_pb2_grpc
from services.common.transport import metrics
from services.common.transport.codec import copy_host, decode_inline, ref_layout, view_buffer
from services.common.transport.cuda_ipc import OpenedPools
from services.common.transport.errors import TransportError
from services.common.transport.shm_attach import DEFAULT_BUDGET_BYTES, AttachedSegments

RELEASE_TIMEOUT_S = 5.0
# Inline tensors can be far larger than gRPC's 4 MB default.
MESSAGE_SIZE_OPTIONS = [
    ("grpc.max_send_message_length", 1 << 30),
    ("grpc.max_receive_message_length", 1 << 30),
]

log = logging.getLogger(__name__)


class TensorImporter:
    """Thread-safe. Releases go out asynchronously; :meth:`flush` waits for them."""

    def __init__(self, *, role: str = "", attach_budget_bytes: int = DEFAULT_BUDGET_BYTES,
                 open_channel: Callable[[str], grpc.Channel] | None = None) -> None:
        self.role = role
        # How to dial a lease owner (TLS in a fleet that uses it); plaintext by default.
        self._open_channel = open_channel or (
            lambda owner: grpc.insecure_channel(owner, options=MESSAGE_SIZE_OPTIONS))
        self._segments = AttachedSegments(attach_budget_bytes)
        self._pools = OpenedPools()
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, tensor_pb2_grpc.TensorLeasesStub]] = {}
        self._pending: set[grpc.Future] = set()
        self._idle = threading.Condition(self._lock)
        self._warned_owners: set[str] = set()

    def load(
        self,
        ref: tensor_pb2.TensorRef,
        *,
        device: str | torch.device = "cpu",
        release: bool = True,
    ) -> torch.Tensor:
        """A new tensor on ``device`` with the ref's values; its lease is released at once."""
        try:
            out = self._read(ref, torch.device(device))
        finally:
            if release:
                self.release([ref])
        return out

    def _read(self, ref: tensor_pb2.TensorRef, device: torch.device) -> torch.Tensor:
        dtype, shape, nbytes = ref_layout(ref)
        kind = ref.WhichOneof("payload")
        _check_lease(ref)
        if kind == "inline":
            if len(ref.inline) != nbytes:
                raise TransportError(
                    f"inline payload has {len(ref.inline)} bytes, "
                    f"{list(shape)} {dtype} needs {nbytes}"
                )
            out = decode_inline(ref.inline, dtype, shape).to(device)
        elif kind == "host_shm":
            out = self._load_shm(ref.host_shm, dtype, shape, nbytes, device)
        elif kind == "cuda_ipc":
            out = self._load_cuda(ref.cuda_ipc, dtype, shape, nbytes, device)
        elif nbytes == 0:
            out = torch.empty(shape, dtype=dtype, device=device)
        else:
            raise TransportError(f"ref without payload for {list(shape)} {dtype}")
        if kind in ("host_shm", "cuda_ipc"):
            # The producer may reuse the memory once the lease expired: a copy that finished
            # after that may hold someone else's bytes.
            _check_lease(ref)
        metrics.LOADED_BYTES.labels(self.role, kind or "inline").inc(nbytes)
        return out

    def release(self, refs: Iterable[tensor_pb2.TensorRef]) -> None:
        """Tell each lease's owner it may reuse the memory: one RPC per owner, never raises."""
        by_owner: dict[str, list[str]] = defaultdict(list)
        for ref in refs:
            if ref.HasField("lease") and ref.lease.lease_id:
                by_owner[ref.lease.owner].append(ref.lease.lease_id)
        for owner, lease_ids in by_owner.items():
            if not owner:
                self._failed("", "no_owner", f"{len(lease_ids)} leases name no owner")
                continue
            future = self._stub(owner).Release.future(
                tensor_pb2.ReleaseRequest(lease_ids=lease_ids), timeout=RELEASE_TIMEOUT_S
            )
            with self._lock:
                self._pending.add(future)
            future.add_done_callback(lambda f, owner=owner: self._done(f, owner))

    def flush(self, timeout_s: float = RELEASE_TIMEOUT_S) -> bool:
        """Wait until every release sent so far has been answered; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or not self._idle.wait(left):
                    return not self._pending
        return True

    def close(self) -> None:
        """Wait briefly for pending releases, then close channels and cached mappings."""
        self.flush()
        with self._lock:
            channels = [channel for channel, _ in self._channels.values()]
            self._channels.clear()
        for channel in channels:
            channel.close()
        self._segments.close()
        self._pools.close()

    def _load_shm(
        self,
        payload: tensor_pb2.HostShm,
        dtype: torch.dtype,
        shape: tuple[int, ...],
        nbytes: int,
        device: torch.device,
    ) -> torch.Tensor:
        if payload.nbytes != nbytes:
            raise TransportError(
                f"host_shm payload has {payload.nbytes} bytes, {list(shape)} {dtype} needs {nbytes}"
            )
        segment = self._segments.get(payload.segment)
        if payload.offset + nbytes > segment.size:
            raise TransportError(
                f"[{payload.offset}, +{nbytes}) lies outside segment {payload.segment} "
                f"of {segment.size} bytes"
            )
        if payload.offset % max(1, torch.empty((), dtype=dtype).element_size()):
            raise TransportError(f"offset {payload.offset} is not aligned for {dtype}")
        view = view_buffer(segment.buffer, payload.offset, dtype, shape)
        if device.type == "cpu":
            return copy_host(torch.empty(shape, dtype=dtype), view)
        return view.to(device)

    def _load_cuda(
        self,
        payload: tensor_pb2.CudaIpc,
        dtype: torch.dtype,
        shape: tuple[int, ...],
        nbytes: int,
        device: torch.device,
    ) -> torch.Tensor:
        if payload.nbytes != nbytes:
            raise TransportError(
                f"cuda_ipc payload has {payload.nbytes} bytes, {list(shape)} {dtype} needs {nbytes}"
            )
        view = self._pools.view(payload, dtype, shape)
        out = view.clone() if view.device == device else view.to(device)
        # The copy must be done before the lease goes, or the producer may overwrite the range.
        torch.cuda.current_stream(view.device).synchronize()
        return out

    def _stub(self, owner: str) -> tensor_pb2_grpc.TensorLeasesStub:
        with self._lock:
            cached = self._channels.get(owner)
            if cached is None:
                channel = self._open_channel(owner)
                cached = (channel, tensor_pb2_grpc.TensorLeasesStub(channel))
                self._channels[owner] = cached
            return cached[1]

    def _done(self, future: grpc.Future, owner: str) -> None:
        with self._idle:
            self._pending.discard(future)
            self._idle.notify_all()
        if future.cancelled():
            self._failed(owner, "cancelled", "release cancelled")
            return
        error = future.exception()
        if error is not None:
            code = error.code() if isinstance(error, grpc.Call) else None
            reason = code.name.lower() if code is not None else "error"
            self._failed(owner, reason, str(error))

    def _failed(self, owner: str, reason: str, detail: str) -> None:
        metrics.RELEASE_FAILURES.labels(self.role, reason).inc()
        with self._lock:
            first = owner not in self._warned_owners
            self._warned_owners.add(owner)
        # The owner reclaims on expiry, so one warning per owner is enough.
        (log.warning if first else log.debug)(
            "lease release to %r failed (%s): %s", owner, reason, detail
        )


def _check_lease(ref: tensor_pb2.TensorRef) -> None:
    expires_ms = ref.lease.expires_unix_ms if ref.HasField("lease") else 0
    if expires_ms and time.time() * 1000 >= expires_ms:
        raise TransportError(f"lease {ref.lease.lease_id} expired")
