"""The gateway's side of a denoise add-on: an attachment to one request.

Each add-on of the denoiser (:mod:`services.denoiser.addons`) has an attachment kind here that
validates its fields of the GenerateRequest (naming them in errors) and, for a request that
uses it, an :class:`Attachment` that takes part in the request flow
(:mod:`services.gateway.request_flow`), in this order:

1. ``nodes()``: model nodes whose queue depth the request holds while it denoises;
   ``resident()``: names the cost model prefers the denoiser to hold already (LoRAs).
2. ``choose_denoiser(replicas)``: may pick the denoiser itself (mask-aware edit placement).
3. ``place(placer, denoiser, wait_s)``: picks the replicas it needs near the denoiser.
4. ``start(calls)``: early work once placed (ask the LoRA cache to load).
5. ``encode(request)``: fills its part of the text encoder's EncodeRequest (LoRAs with
   text-encoder layers).
6. ``attach(addons, ctx)``: fills its field of the DenoiseRequest's ``addons``.
7. ``progress(event, out, ctx)``: sees each step's progress (decode a preview, update a ledger).
8. ``report(metadata)``: what it adds to the result's metadata, from the denoiser's.
9. ``close()``: frees what it booked, whatever the outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from diffusion.v1 import denoiser_pb2, gateway_pb2, tensor_pb2, text_encoder_pb2
from services.common.fleet_state import ReplicaInfo
from services.common.model_store import ModelStore
from services.gateway.generation import Generation
from services.gateway.node_calls import NodeCalls
from services.gateway.settings import GatewaySettings


@dataclass
class AttachContext:
    """What an attachment may use while the request runs."""

    generation: Generation
    calls: NodeCalls
    denoiser_peer: tensor_pb2.PeerInfo
    vae: ReplicaInfo                       # for previews

    def export(self, tensor: Any) -> tensor_pb2.TensorRef:
        """``tensor`` for the denoiser to read."""
        return self.calls.exporter.export(tensor, self.denoiser_peer,
                                          request_id=self.generation.request_id)


class Attachment:
    """One add-on of one request. Every hook's default does nothing."""

    name: ClassVar[str] = ""    # its field in the denoiser's Addons message
    label: ClassVar[str] = ""   # its part of the workflow kind ("controlnet", ...)
    field: ClassVar[str] = ""   # the request field that asks for it

    def nodes(self) -> list[tuple[str, str]]:
        return []

    def resident(self) -> list[str]:
        return []

    def choose_denoiser(self, replicas: Callable[[], list[ReplicaInfo]]) -> ReplicaInfo | None:
        """The denoiser to use (None: the cost model's choice); ``replicas()`` lists the
        live ones."""
        return None

    def place(self, placer: Any, denoiser: ReplicaInfo, wait_s: float) -> None:
        return None

    def replicas(self) -> list[ReplicaInfo]:
        return []

    def start(self, calls: NodeCalls) -> None:
        return None

    def encode(self, request: text_encoder_pb2.EncodeRequest) -> None:
        return None

    def attach(self, addons: denoiser_pb2.Addons, ctx: AttachContext) -> None:
        return None

    def progress(self, event: denoiser_pb2.DenoiseProgress, out: gateway_pb2.Progress,
                 ctx: AttachContext) -> None:
        return None

    def report(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return {}

    def close(self) -> None:
        return None


class AttachmentKind(Protocol):
    def validate(self, request: gateway_pb2.GenerateRequest, generation: Generation,
                 store: ModelStore, limits: GatewaySettings) -> Attachment | None:
        """The request's attachment of this kind (None: it asks for none); raises
        INVALID_ARGUMENT / NOT_FOUND naming the offending field."""
        ...
