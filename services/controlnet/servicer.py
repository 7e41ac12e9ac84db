"""gRPC <-> ControlNetEngine over one bidirectional stream per (request, ControlNet).

Two ways to run the steps of a stream. Through a step ring (the denoiser offered
one, so it is on this host): the open is answered with whether the ring was
taken, and then every step comes and goes through shared memory, signalled
over the ring's socket; the gRPC stream stays open only to end with the
stream's status. Otherwise each step is a message on the stream, its tensors
TensorRefs. Either way the answer carries both residual lists: a UNet
ControlNet's down blocks' and mid block's, a Flux ControlNet's joint and
single blocks' samples.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import torch

from diffusion.v1 import controlnet_pb2, controlnet_pb2_grpc, tensor_pb2
from services.common.controlnet_calls import is_flux
from services.common.errors import InvalidArgument
from services.common.input_checks import check_finite
from services.common.server import ServiceRuntime
from services.common.transport.ring_offer import take_offer
from services.common.transport.ring_socket import RingClosed
from services.common.transport.ring_stream import RingStream
from services.controlnet.engine import ControlNetEngine, ResidentControlNet, Residuals


@dataclass
class _Stream:
    """What every step of one stream reads."""

    controlnet: ResidentControlNet
    embeds: torch.Tensor
    cond_image: torch.Tensor
    added_cond: dict[str, torch.Tensor] | None = None
    shared: dict[str, torch.Tensor] | None = None   # inputs every row shares (Flux)
    checked: bool = False
    zeros: Residuals | None = field(default=None)


class ControlNetServicer(controlnet_pb2_grpc.ControlNetServicer):
    def __init__(self, engine: ControlNetEngine, runtime: ServiceRuntime,
                 step_ring: bool = True) -> None:
        self.engine = engine
        self.runtime = runtime
        self.step_ring = step_ring

    def Steps(self, requests: Iterator[controlnet_pb2.ControlNetStepRequest],
              context: grpc.ServicerContext) -> Iterator[controlnet_pb2.ControlNetStepResponse]:
        first = next(requests, None)
        if first is None or first.WhichOneof("message") != "open":
            raise InvalidArgument("the first message must be open", field="open")
        request_id, opening = first.request_id, first.open
        ring: RingStream | None = None
        try:
            if opening.HasField("ring"):
                ring, answer = take_offer(opening.ring, self.step_ring, self.runtime.role)
                if ring is not None:
                    context.add_callback(ring.shutdown)  # a cancelled call wakes the loop
                yield controlnet_pb2.ControlNetStepResponse(ring=answer)
            yield from self._serve(request_id, opening, requests, context, ring)
        finally:
            if ring is not None:
                ring.close()

    def _serve(self, request_id: str, opening: controlnet_pb2.ControlNetOpen,
               requests: Iterator[controlnet_pb2.ControlNetStepRequest],
               context: grpc.ServicerContext, ring: RingStream | None
               ) -> Iterator[controlnet_pb2.ControlNetStepResponse]:
        importer, exporter = self.runtime.importer, self.runtime.exporter
        controlnet = self.engine.acquire(opening.controlnet)
        try:
            stream = _Stream(controlnet, importer.load(opening.prompt_embeds),
                             importer.load(opening.cond_image),
                             {k: importer.load(v) for k, v in opening.added_cond.items()}
                             or None,
                             {k: importer.load(v) for k, v in opening.shared.items()} or None)
            controlnet.check_compatible(stream.embeds)

            def export(t: torch.Tensor) -> tensor_pb2.TensorRef:
                return exporter.export(t, opening.peer, request_id=request_id)
            if ring is not None:
                self._ring_steps(ring, stream)
                return
            for message in _until_closed(requests, context):
                step = message.step
                exporter.release(step.release_lease_ids)
                latents = importer.load(step.latents, release=False)
                (first, second), compute_ms = self._answer(stream, latents, step.timestep,
                                                           step.conditioning_scale)
                # a UNet ControlNet's second list is its mid block's residual alone
                flux = is_flux(controlnet.model)
                yield controlnet_pb2.ControlNetStepResponse(
                    step=step.step, compute_ms=compute_ms,
                    down_residuals=[export(t) for t in first],
                    mid_residual=None if flux else export(second[0]),
                    single_block_residuals=[export(t) for t in second] if flux else [],
                    release_lease_ids=[step.latents.lease.lease_id]
                    if step.latents.lease.lease_id else [])
        finally:
            self.engine.release(opening.controlnet)
            exporter.release_request(request_id)

    def _ring_steps(self, ring: RingStream, stream: _Stream) -> None:
        """Answers steps from the ring until the denoiser closes its end (or dies)."""
        while True:
            try:
                header, tensors = ring.receive(copy=False)  # the latents, read in place
            except RingClosed:
                return
            if len(tensors) != 1:
                raise InvalidArgument(f"a ring step carries the latents alone, not "
                                      f"{len(tensors)} tensors", field="step.latents")
            try:
                step, timestep = int(header["step"]), float(header["timestep"])
                scale = float(header["scale"])
            except (KeyError, TypeError, ValueError) as e:
                raise InvalidArgument(f"bad ring step header {header!r}: {e}",
                                      field="step") from None
            (first, second), compute_ms = self._answer(stream, tensors[0], timestep, scale)
            try:
                # "first": where the tensors' second list (mid, or single blocks') starts
                ring.send({"step": step, "compute_ms": compute_ms, "first": len(first)},
                          [*first, *second])
            except RingClosed:
                return

    def _answer(self, stream: _Stream, latents: torch.Tensor, timestep_value: float,
                scale: float) -> tuple[Residuals, float]:
        """One step's residuals and the milliseconds spent computing them."""
        check_finite(scale, "step.conditioning_scale", -1000.0, 1000.0)
        check_finite(timestep_value, "step.timestep")
        if not stream.checked:
            stream.controlnet.check_compatible(stream.embeds, latents)
            stream.checked = True
        start = time.perf_counter()
        timestep = torch.tensor(timestep_value, dtype=torch.float64)
        if scale == 0.0:
            if stream.zeros is None:
                stream.zeros = self.engine.zeros(stream.controlnet, latents, timestep,
                                                 stream.embeds, stream.cond_image,
                                                 stream.added_cond, stream.shared)
            residuals = stream.zeros
        else:
            residuals = self.engine.step(stream.controlnet, latents, timestep, stream.embeds,
                                         stream.cond_image, scale, stream.added_cond,
                                         stream.shared)
        return residuals, (time.perf_counter() - start) * 1e3


def _until_closed(requests: Iterator[controlnet_pb2.ControlNetStepRequest],
                  context: grpc.ServicerContext) -> Iterator[controlnet_pb2.ControlNetStepRequest]:
    """The stream's messages; ends quietly when the denoiser cancels it (its request ended)."""
    try:
        yield from requests
    except grpc.RpcError:
        if context.is_active():
            raise
