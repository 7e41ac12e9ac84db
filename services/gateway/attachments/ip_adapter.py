"""IP-Adapters of a request (image prompts): validated here, each image encoded by its adapter's
image encoder near the denoiser, the adapters' image attention added there."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import grpc

from diffusion.v1 import denoiser_pb2, gateway_pb2, image_encoder_pb2, image_encoder_pb2_grpc
from services.common.errors import InvalidArgument, from_rpc_error
from services.common.fleet_state import ReplicaInfo
from services.common.model_store import ModelStore
from services.gateway import images
from services.gateway.attachments.base import AttachContext, Attachment
from services.gateway.generation import Generation
from services.gateway.node_calls import NodeCalls
from services.gateway.placement import peer_of
from services.gateway.settings import GatewaySettings
from services.gateway.validation_rules import in_range

MAX_IP_ADAPTERS = 4
MAX_SCALE = 2.0


@dataclass(frozen=True)
class IpAdapterPlan:
    name: str
    image: bytes              # as uploaded; the image encoder decodes and preprocesses it
    scale: float


class IpAdapterAttachment(Attachment):
    name = "ip_adapter"
    field = "ip_adapters"
    label = "ip_adapter"

    def __init__(self, adapters: list[IpAdapterPlan]) -> None:
        self.adapters = adapters
        self.encoders: list[ReplicaInfo] = []
        self.denoiser: ReplicaInfo | None = None
        self._embeds: list[Future[Any]] = []

    def nodes(self) -> list[tuple[str, str]]:
        return [("image_encoder", a.name) for a in self.adapters]

    def place(self, placer: object, denoiser: ReplicaInfo, wait_s: float) -> None:
        self.denoiser = denoiser
        self.encoders = [placer.pick("image_encoder", a.name, denoiser.host_id,  # type: ignore[attr-defined]
                                     wait_s=wait_s) for a in self.adapters]

    def replicas(self) -> list[ReplicaInfo]:
        return list(self.encoders)

    def start(self, calls: NodeCalls) -> None:
        """Each image is encoded while the prompts are."""
        assert self.denoiser is not None
        peer = peer_of(self.denoiser, calls.inline_max_bytes)
        self._embeds = []
        for adapter, replica in zip(self.adapters, self.encoders, strict=True):
            stub = image_encoder_pb2_grpc.ImageEncoderStub(calls.channel(replica))
            self._embeds.append(stub.Encode.future(
                image_encoder_pb2.ImageEncodeRequest(
                    request_id=calls.request_id, ip_adapter=adapter.name, image=adapter.image,
                    peer=peer),
                timeout=calls.timeout(), metadata=calls.metadata()))

    def attach(self, addons: denoiser_pb2.Addons, ctx: AttachContext) -> None:
        attached = []
        for adapter, pending in zip(self.adapters, self._embeds, strict=True):
            try:
                reply = pending.result()
            except grpc.RpcError as err:
                raise from_rpc_error(err, "image_encoder") from err
            attached.append(denoiser_pb2.IpAdapterAttachment(
                name=adapter.name, scale=adapter.scale, image_embeds=reply.image_embeds))
        addons.ip_adapter.CopyFrom(denoiser_pb2.IpAdapters(adapters=attached))


class IpAdapterKind:
    def validate(self, req: gateway_pb2.GenerateRequest, gen: Generation, store: ModelStore,
                 limits: GatewaySettings) -> IpAdapterAttachment | None:
        if len(req.ip_adapters) > MAX_IP_ADAPTERS:
            raise InvalidArgument(f"at most {MAX_IP_ADAPTERS}", field="ip_adapters")
        family = store.family(gen.model)
        if req.ip_adapters and "ip_adapter" not in family.addons:
            raise InvalidArgument(f"IP-Adapters are not served on {family.name} models "
                                  f"({gen.model!r})", field="ip_adapters")
        plans = []
        width = store.cross_attention_dim(gen.model) if req.ip_adapters else 0
        for i, a in enumerate(req.ip_adapters):
            where = f"ip_adapters[{i}]"
            store.get(a.name, ("ip_adapter",), field=f"{where}.name")
            if store.ip_adapter_width(a.name) != width:
                raise InvalidArgument(
                    f"IP-Adapter {a.name!r} is for models with text embeddings of width "
                    f"{store.ip_adapter_width(a.name)}; {gen.model!r} has {width}",
                    field=f"{where}.name")
            if not a.HasField("image"):
                raise InvalidArgument("an image is required", field=f"{where}.image")
            images.decode(a.image.data, f"{where}.image", limits.max_image_bytes)
            scale = a.scale if a.HasField("scale") else 1.0
            in_range(scale, 0.0, MAX_SCALE, f"{where}.scale")
            plans.append(IpAdapterPlan(a.name, a.image.data, scale))
        return IpAdapterAttachment(plans) if plans else None
