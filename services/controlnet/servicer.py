"""gRPC <-> ControlNetEngine over one bidirectional stream per (request, ControlNet)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import torch

from diffusion.v1 import controlnet_pb2, controlnet_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.server import ServiceRuntime
from services.controlnet.engine import ControlNetEngine


class ControlNetServicer(controlnet_pb2_grpc.ControlNetServicer):
    def __init__(self, engine: ControlNetEngine, runtime: ServiceRuntime) -> None:
        self.engine = engine
        self.runtime = runtime

    def Steps(self, requests: Iterator[controlnet_pb2.ControlNetStepRequest],
              context: grpc.ServicerContext) -> Iterator[controlnet_pb2.ControlNetStepResponse]:
        first = next(requests, None)
        if first is None or first.WhichOneof("message") != "open":
            raise InvalidArgument("the first message must be open", field="open")
        request_id, opening = first.request_id, first.open
        importer, exporter = self.runtime.importer, self.runtime.exporter
        controlnet = self.engine.acquire(opening.controlnet)
        try:
            cond_image = importer.load(opening.cond_image)
            embeds = importer.load(opening.prompt_embeds)
            controlnet.check_compatible(embeds)
            zeros = None
            checked = False
            for message in _until_closed(requests, context):
                step = message.step
                exporter.release(step.release_lease_ids)
                latents = importer.load(step.latents, release=False)
                if not checked:
                    controlnet.check_compatible(embeds, latents)
                    checked = True
                start = time.perf_counter()
                timestep = torch.tensor(step.timestep, dtype=torch.float64)
                if step.conditioning_scale == 0.0:
                    if zeros is None:
                        zeros = self.engine.zeros(controlnet, latents, timestep, embeds,
                                                  cond_image)
                    down, mid = zeros
                else:
                    down, mid = self.engine.step(controlnet, latents, timestep, embeds,
                                                 cond_image, step.conditioning_scale)
                compute_ms = (time.perf_counter() - start) * 1e3
                peer = opening.peer
                yield controlnet_pb2.ControlNetStepResponse(
                    step=step.step, compute_ms=compute_ms,
                    down_residuals=[exporter.export(d, peer, request_id=request_id)
                                    for d in down],
                    mid_residual=exporter.export(mid, peer, request_id=request_id),
                    release_lease_ids=[step.latents.lease.lease_id]
                    if step.latents.lease.lease_id else [])
        finally:
            self.engine.release(opening.controlnet)
            exporter.release_request(request_id)


def _until_closed(requests: Iterator[controlnet_pb2.ControlNetStepRequest],
                  context: grpc.ServicerContext) -> Iterator[controlnet_pb2.ControlNetStepRequest]:
    """The stream's messages; ends quietly when the denoiser cancels it (its request ended)."""
    try:
        yield from requests
    except grpc.RpcError:
        if context.is_active():
            raise
