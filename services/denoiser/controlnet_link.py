"""The denoiser's end of one (request, ControlNet) step stream.

On the ControlNet's host the link offers a step ring with the stream's open
message: once the ControlNet takes it, each step's latents go into the link's
shared-memory ring and the residuals come back through the ControlNet's,
signalled over the ring's local socket by the step loop's own thread; no
protobuf message and no gRPC thread per step. The gRPC stream carries the
open, the answer to the offer and, at the end, the status: when the ring's
socket closes (the ControlNet failed, or its process died) the error is the
stream's status, or UNAVAILABLE naming the ControlNet when none comes.

Otherwise (another host, a ControlNet that refuses, ``ring=False``) each step
is a message on the stream with TensorRefs, and the fallback is counted in
``dfleet_transport_fallbacks_total``.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import torch

from diffusion.v1 import controlnet_pb2, controlnet_pb2_grpc, tensor_pb2
from services.common.channels import ChannelPool
from services.common.controlnet_calls import Residuals
from services.common.errors import DeadlineExceeded, FleetError, Unavailable, from_rpc_error
from services.common.transport import TensorExporter, TensorImporter
from services.common.transport.ring_offer import (
    closed_ring_error,
    offer_message,
    offer_ring,
    settle_offer,
)
from services.common.transport.ring_socket import RingClosed, RingListener
from services.common.transport.ring_stream import RingStream

NO_DEADLINE_S = 1e6   # gRPC reports "no deadline" as ~9e18 s, which no socket takes


class ControlNetLink:
    """Opens the stream at construction; then one ``send`` and one ``receive`` per step."""

    def __init__(self, channels: ChannelPool, address: str, request_id: str, controlnet: str,
                 cond_image: torch.Tensor, prompt_embeds: torch.Tensor,
                 exporter: TensorExporter, importer: TensorImporter,
                 peer: tensor_pb2.PeerInfo | None, own_peer: tensor_pb2.PeerInfo,
                 timeout: float | None, ring: bool = True,
                 added_cond: dict[str, torch.Tensor] | None = None,
                 shared: dict[str, torch.Tensor] | None = None) -> None:
        self.address = address
        self.request_id = request_id
        self.exporter = exporter
        self.importer = importer
        self.peer = peer
        self._deadline = (time.monotonic() + timeout
                          if timeout is not None and timeout < NO_DEADLINE_S else None)
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._held: list[tensor_pb2.TensorRef] = []
        self._ring: RingStream | None = None
        offer = offer_ring(ring, peer, own_peer, exporter.role)
        stub = controlnet_pb2_grpc.ControlNetStub(channels.get(address))
        self._outbox.put(controlnet_pb2.ControlNetStepRequest(
            request_id=request_id,
            open=controlnet_pb2.ControlNetOpen(
                controlnet=controlnet, peer=own_peer,
                cond_image=exporter.export(cond_image, peer, request_id=request_id),
                prompt_embeds=exporter.export(prompt_embeds, peer, request_id=request_id),
                added_cond={k: exporter.export(v, peer, request_id=request_id)
                            for k, v in (added_cond or {}).items()},
                shared={k: exporter.export(v, peer, request_id=request_id)
                        for k, v in (shared or {}).items()},
                ring=offer_message(offer) if offer is not None else None)))
        self._responses: Iterator[controlnet_pb2.ControlNetStepResponse] = stub.Steps(
            iter(self._outbox.get, None), timeout=timeout,
            metadata=(("x-request-id", request_id),))
        if offer is not None:
            try:
                self._ring = self._settle(offer)
            except BaseException:
                self.close()
                raise

    def send(self, step: int, latents: torch.Tensor, timestep: torch.Tensor, scale: float) -> None:
        if self._ring is not None:
            try:
                self._ring.send({"step": step, "timestep": float(timestep), "scale": scale},
                                [latents])
            except RingClosed as closed:
                raise self._stream_error(closed) from closed
            return
        release = [r.lease.lease_id for r in self._held if r.lease.lease_id]
        self._held = []
        self._outbox.put(controlnet_pb2.ControlNetStepRequest(
            request_id=self.request_id,
            step=controlnet_pb2.ControlNetStep(
                step=step, timestep=float(timestep), conditioning_scale=scale,
                latents=self.exporter.export(latents, self.peer, request_id=self.request_id),
                release_lease_ids=release)))

    def receive(self) -> Residuals:
        if self._ring is not None:
            try:
                header, tensors = self._ring.receive(timeout=self._left())
            except RingClosed as closed:
                raise self._stream_error(closed) from closed
            except TimeoutError:
                raise DeadlineExceeded(f"controlnet {self.address}: no residuals before the "
                                       "request's deadline") from None
            first = int(header.get("first", len(tensors) - 1))
            return tensors[:first], tensors[first:]
        try:
            response = next(self._responses)
        except grpc.RpcError as err:
            raise from_rpc_error(err, f"controlnet {self.address}") from err
        self.exporter.release(response.release_lease_ids)
        second = ([response.mid_residual] if response.HasField("mid_residual")
                  else list(response.single_block_residuals))
        refs = [*response.down_residuals, *second]
        tensors = [self.importer.load(ref, release=False) for ref in refs]
        self._held = refs
        first = len(response.down_residuals)
        return tensors[:first], tensors[first:]

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
        self._outbox.put(None)
        if self._held:
            self.importer.release(self._held)
            self._held = []
        cancel = getattr(self._responses, "cancel", None) if hasattr(self, "_responses") else None
        if cancel is not None:
            cancel()

    def _settle(self, offer: RingListener) -> RingStream | None:
        """The ring, once the ControlNet took it; None when it refused."""
        try:
            answer = next(self._responses)
        except grpc.RpcError as err:
            offer.close()
            raise from_rpc_error(err, f"controlnet {self.address}") from err
        except StopIteration:
            offer.close()
            raise Unavailable(f"controlnet {self.address}: ended the stream at its "
                              "open") from None
        try:
            return settle_offer(offer, answer.ring, f"controlnet {self.address}",
                                self.exporter.role)
        except TimeoutError:
            raise Unavailable(f"controlnet {self.address}: took the step ring but did not "
                              "connect to it") from None

    def _left(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def _stream_error(self, closed: RingClosed) -> FleetError:
        return closed_ring_error(self._responses, closed, f"controlnet {self.address}")
