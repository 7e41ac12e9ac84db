"""LoRA patches with bounded asynchronous loading (BAL), as a step-loop add-on.

A request's LoRAs load in the background (:mod:`services.denoiser.lora_loader`) while it
starts denoising without them; they join at the first step boundary after they are loaded and
never later than the BAL bound K (:mod:`services.denoiser.bal`), 0 meaning before the first
step (exact). While joined, the request's *patch* (its (LoRA, scale) pairs) is its batch key:
a replica holds one patch merged at a time (:mod:`services.common.lora_merge`). On a CFG
partner the LoRAs follow the requester's steps: merged exactly when the requester had them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from diffusion.v1 import denoiser_pb2
from services.common.errors import InvalidArgument
from services.common.lora_merge import Patch
from services.denoiser.addons import BuildContext, Export, ReadTensor
from services.denoiser.addons.base import Addon, LoraLayers, WeightPatch
from services.denoiser.bal import BalProfiles, LoraGate


@dataclass(frozen=True)
class LoraSpec:
    name: str
    scale: float
    address: str               # the LoRA cache on this node


@dataclass(frozen=True)
class LoraRequest:
    loras: tuple[LoraSpec, ...]
    async_steps: int = 0       # BAL bound K; -1 = the stored profile's; 0 = exact

    @property
    def patch(self) -> Patch:
        """In the request's order: a DoRA layer normalises what the LoRAs before it merged."""
        return tuple((spec.name, spec.scale) for spec in self.loras)


class LoraAddon(Addon):
    name = "lora"

    def __init__(self, patch: Patch, loaded: Future[LoraLayers], bound: int = 0,
                 follow: Callable[[], bool] | None = None) -> None:
        """``follow`` (CFG partner): whether the requester merged its LoRAs for this step."""
        self.gate = LoraGate(patch, loaded, bound)
        self.follow = follow

    def _merged(self) -> bool:
        return self.follow() if self.follow is not None else self.gate.patched

    def batch_key(self) -> Hashable | None:
        return self.gate.full_patch if self._merged() else None

    def ready(self, step: int) -> bool:
        if self.follow is None:
            return self.gate.ready_for(step)
        return not self.follow() or self.gate.loaded()

    def weight_patch(self) -> WeightPatch | None:
        return WeightPatch(self.gate.full_patch, self.gate.layers) if self._merged() else None

    def metadata(self) -> dict[str, str]:
        if self.follow is not None or self.gate.patched_at is None:
            return {}
        return {"lora_joined_step": str(self.gate.patched_at)}


class LoraKind:
    """LoRAs of a request: fetched through ``loader``, checked against the model's UNet."""

    name = "lora"
    on_partner = True

    def __init__(self, loader: Any, profiles: BalProfiles) -> None:
        self.loader = loader          # services.denoiser.lora_loader.LoraLoader
        self.profiles = profiles

    def decode(self, message: denoiser_pb2.LoraPatch, read: ReadTensor) -> LoraRequest | None:
        if message.async_steps < -1:
            raise InvalidArgument("must be -1 (profile), 0 (exact) or a step bound",
                                  field="lora.async_steps")
        if not message.loras:
            return None
        return LoraRequest(tuple(LoraSpec(lo.name, lo.scale, lo.address)
                                 for lo in message.loras), message.async_steps)

    def encode(self, spec: LoraRequest, export: Export) -> denoiser_pb2.LoraPatch:
        return denoiser_pb2.LoraPatch(
            loras=[denoiser_pb2.LoraAttachment(name=s.name, scale=s.scale, address=s.address)
                   for s in spec.loras], async_steps=spec.async_steps)

    def build(self, spec: LoraRequest, ctx: BuildContext) -> LoraAddon:
        loaded = checked(ctx.engine, ctx.model,
                         self.loader.load(list(spec.loras), ctx.request_id))
        if ctx.partner:
            return LoraAddon(spec.patch, loaded, follow=ctx.follow_weights)
        bound = self.profiles.bound(spec.async_steps, ctx.model, [s.name for s in spec.loras],
                                    ctx.num_inference_steps)
        return LoraAddon(spec.patch, loaded, bound)


def checked(engine: Any, model: str, loading: Future[LoraLayers]) -> Future[LoraLayers]:
    """``loading``, checked against ``model``'s UNet once done; wakes the loop then."""
    patcher = engine.load_unet(model).patcher
    out: Future[LoraLayers] = Future()

    def done(source: Future[LoraLayers]) -> None:
        try:
            layers = source.result()
            for name, lora in layers.items():
                patcher.check(name, lora)
            out.set_result(layers)
        except BaseException as exc:  # noqa: BLE001 - handed to the request
            out.set_exception(exc)
        engine.wake()

    loading.add_done_callback(done)
    return out
