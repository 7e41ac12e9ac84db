"""CFG parallelism: the request's unconditional rows on a second denoiser replica."""

from __future__ import annotations

from collections.abc import Mapping

from diffusion.v1 import denoiser_pb2, gateway_pb2
from services.common.fleet_state import ReplicaInfo
from services.common.model_store import ModelStore
from services.gateway.attachments.base import AttachContext, Attachment
from services.gateway.generation import Generation
from services.gateway.placement import peer_of
from services.gateway.settings import GatewaySettings


class CfgParallelAttachment(Attachment):
    name = "cfg_partner"
    field = "approximations.cfg_parallel"

    def __init__(self, model: str) -> None:
        self.model = model
        self.partner: ReplicaInfo | None = None

    def place(self, placer: object, denoiser: ReplicaInfo, wait_s: float) -> None:
        """A partner if another denoiser is alive; else the request runs on one replica."""
        self.partner = placer.cfg_partner(self.model, denoiser)  # type: ignore[attr-defined]

    def replicas(self) -> list[ReplicaInfo]:
        return [self.partner] if self.partner is not None else []

    def attach(self, addons: denoiser_pb2.Addons, ctx: AttachContext) -> None:
        if self.partner is not None:
            addons.cfg_partner.CopyFrom(denoiser_pb2.CfgPartner(
                address=self.partner.address,
                peer=peer_of(self.partner, ctx.calls.inline_max_bytes)))

    def report(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return {"cfg_partner": self.partner.replica_id} if self.partner is not None else {}


class CfgParallelKind:
    def validate(self, req: gateway_pb2.GenerateRequest, gen: Generation, store: ModelStore,
                 limits: GatewaySettings) -> CfgParallelAttachment | None:
        if not (req.approximations.cfg_parallel and gen.do_cfg):
            return None
        return CfgParallelAttachment(gen.model)
