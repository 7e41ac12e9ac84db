"""LoRAs of a request: validated here (each must fit the model in full, as the scan found),
loaded by the LoRA cache near the denoiser, merged there; their text-encoder layers are merged
by the text encoder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from diffusion.v1 import (
    denoiser_pb2,
    gateway_pb2,
    lora_cache_pb2,
    lora_cache_pb2_grpc,
    text_encoder_pb2,
)
from services.common.errors import InvalidArgument
from services.common.fleet_state import ReplicaInfo
from services.common.lora_scan import LoraFit
from services.common.model_store import ModelStore
from services.gateway.attachments.base import AttachContext, Attachment
from services.gateway.generation import Generation
from services.gateway.node_calls import NodeCalls
from services.gateway.settings import GatewaySettings
from services.gateway.validation_rules import in_range

PREPARE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LoraPlan:
    name: str
    scale: float                    # on the denoiser (0: not there)
    text_encoder: bool = False      # has text-encoder layers (merged by the text encoder)
    text_encoder_scale: float | None = None   # None: scale

    @property
    def encoder_scale(self) -> float:
        return self.scale if self.text_encoder_scale is None else self.text_encoder_scale


class LoraAttachment(Attachment):
    name = "lora"
    field = "loras"
    label = "lora"

    def __init__(self, loras: list[LoraPlan], async_steps: int) -> None:
        self.loras = loras
        self.async_steps = async_steps
        self.cache: ReplicaInfo | None = None
        self._prepare: object = None   # held: gRPC cancels a future call once it is collected

    def resident(self) -> list[str]:
        return [lo.name for lo in self.loras if lo.scale]

    def place(self, placer: object, denoiser: ReplicaInfo, wait_s: float) -> None:
        self.cache = placer.pick("lora_cache", "", denoiser.host_id,  # type: ignore[attr-defined]
                                 wait_s=wait_s)

    def replicas(self) -> list[ReplicaInfo]:
        return [self.cache] if self.cache is not None else []

    def start(self, calls: NodeCalls) -> None:
        """The LoRA cache starts loading now; the denoiser fetches them when it needs them."""
        assert self.cache is not None
        stub = lora_cache_pb2_grpc.LoraCacheStub(calls.channel(self.cache))
        self._prepare = stub.Prepare.future(lora_cache_pb2.PrepareLoraRequest(
            request_id=calls.request_id, loras=[lo.name for lo in self.loras]),
            timeout=min(PREPARE_TIMEOUT_S, calls.timeout() or PREPARE_TIMEOUT_S),
            metadata=calls.metadata())

    def encode(self, request: text_encoder_pb2.EncodeRequest) -> None:
        """The text-encoder layers merge with the LoRA's own scale, as the reference
        pipelines' ``set_adapters`` scales a LoRA's every component by default, or with its
        text-encoder scale when the request gives one."""
        assert self.cache is not None
        request.loras.extend(text_encoder_pb2.TextEncoderLora(
            name=lo.name, scale=lo.encoder_scale, address=self.cache.address)
            for lo in self.loras if lo.text_encoder and lo.encoder_scale)

    def attach(self, addons: denoiser_pb2.Addons, ctx: AttachContext) -> None:
        assert self.cache is not None
        patch = [denoiser_pb2.LoraAttachment(name=lo.name, scale=lo.scale,
                                             address=self.cache.address)
                 for lo in self.loras if lo.scale]
        if patch:
            addons.lora.CopyFrom(denoiser_pb2.LoraPatch(async_steps=self.async_steps,
                                                        loras=patch))

    def report(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return {"lora_joined_step": metadata.get("lora_joined_step", "0")}


class LoraKind:
    def validate(self, req: gateway_pb2.GenerateRequest, gen: Generation, store: ModelStore,
                 limits: GatewaySettings) -> LoraAttachment | None:
        async_steps = req.approximations.lora_async_steps
        if not -1 <= async_steps <= gen.steps:
            raise InvalidArgument(f"{async_steps} is not -1 (profile), 0 (exact) or a "
                                  f"step bound up to {gen.steps}",
                                  field="approximations.lora_async_steps")
        if len(req.loras) > limits.max_loras:
            raise InvalidArgument(f"at most {limits.max_loras}", field="loras")
        plans: list[LoraPlan] = []
        for i, lora in enumerate(req.loras):
            fit = check_fit(store, lora.name, gen.model, f"loras[{i}].name")
            if any(p.name == lora.name for p in plans):
                raise InvalidArgument(f"LoRA {lora.name!r} is listed twice",
                                      field=f"loras[{i}].name")
            encoder_scale = (lora.text_encoder_scale if lora.HasField("text_encoder_scale")
                             else None)
            scale = lora.scale if encoder_scale is not None else lora.scale or 1.0
            in_range(scale, -4.0, 4.0, f"loras[{i}].scale")
            if encoder_scale is not None:
                in_range(encoder_scale, -4.0, 4.0, f"loras[{i}].text_encoder_scale")
            plans.append(LoraPlan(lora.name, scale, fit.text_encoder_layers, encoder_scale))
        return LoraAttachment(plans, async_steps) if plans else None


def check_fit(store: ModelStore, name: str, model: str, field: str) -> LoraFit:
    """``name``'s fit; refuses, before any compute, a LoRA that model ``model`` cannot take in
    full."""
    fit = store.loras.usable(name, field)
    if model in fit.fits:
        return fit
    family = store.pipeline(model).family
    if fit.family and fit.family != family:
        raise InvalidArgument(f"LoRA {name!r} is a {fit.family} LoRA (it fits "
                              f"{', '.join(fit.fits)}); {model!r} is a {family} model",
                              field=field)
    reason = fit.misfits.get(model, f"LoRA {name!r} was not matched against {model!r}")
    fitting = ", ".join(fit.fits)
    raise InvalidArgument(f"{reason}; it fits {fitting}", field=field)
