"""The denoiser's end of one (request, ControlNet) step stream."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
import torch

from diffusion.v1 import controlnet_pb2, controlnet_pb2_grpc, tensor_pb2
from services.common.channels import ChannelPool
from services.common.errors import from_rpc_error
from services.common.transport import TensorExporter, TensorImporter

Residuals = tuple[list[torch.Tensor], torch.Tensor]


class ControlNetLink:
    """Opens the stream at construction; then one ``send`` and one ``receive`` per step."""

    def __init__(self, channels: ChannelPool, address: str, request_id: str, controlnet: str,
                 cond_image: torch.Tensor, prompt_embeds: torch.Tensor,
                 exporter: TensorExporter, importer: TensorImporter,
                 peer: tensor_pb2.PeerInfo | None, own_peer: tensor_pb2.PeerInfo,
                 timeout: float | None) -> None:
        self.address = address
        self.request_id = request_id
        self.exporter = exporter
        self.importer = importer
        self.peer = peer
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._held: list[tensor_pb2.TensorRef] = []
        stub = controlnet_pb2_grpc.ControlNetStub(channels.get(address))
        self._outbox.put(controlnet_pb2.ControlNetStepRequest(
            request_id=request_id,
            open=controlnet_pb2.ControlNetOpen(
                controlnet=controlnet, peer=own_peer,
                cond_image=exporter.export(cond_image, peer, request_id=request_id),
                prompt_embeds=exporter.export(prompt_embeds, peer, request_id=request_id))))
        self._responses: Iterator[controlnet_pb2.ControlNetStepResponse] = stub.Steps(
            iter(self._outbox.get, None), timeout=timeout,
            metadata=(("x-request-id", request_id),))

    def send(self, step: int, latents: torch.Tensor, timestep: torch.Tensor, scale: float) -> None:
        release = [r.lease.lease_id for r in self._held if r.lease.lease_id]
        self._held = []
        self._outbox.put(controlnet_pb2.ControlNetStepRequest(
            request_id=self.request_id,
            step=controlnet_pb2.ControlNetStep(
                step=step, timestep=float(timestep), conditioning_scale=scale,
                latents=self.exporter.export(latents, self.peer, request_id=self.request_id),
                release_lease_ids=release)))

    def receive(self) -> Residuals:
        try:
            response = next(self._responses)
        except grpc.RpcError as err:
            raise from_rpc_error(err, f"controlnet {self.address}") from err
        self.exporter.release(response.release_lease_ids)
        refs = [*response.down_residuals, response.mid_residual]
        tensors = [self.importer.load(ref, release=False) for ref in refs]
        self._held = refs
        return tensors[:-1], tensors[-1]

    def close(self) -> None:
        self._outbox.put(None)
        if self._held:
            self.importer.release(self._held)
            self._held = []
        cancel = getattr(self._responses, "cancel", None)
        if cancel is not None:
            cancel()
