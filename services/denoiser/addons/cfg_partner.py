"""CFG parallelism, the requesting side: the unconditional rows run on a partner replica.

Each step the unconditional rows go to the partner
(:class:`~services.denoiser.cfg_link.CfgPartnerLink`) and this replica runs the conditional
ones; the step completes once the partner's noise prediction is back (the loop serves other
work meanwhile). The partner builds the request's other add-ons for its rows from the same
registry (:mod:`services.denoiser.cfg_pass`), from the specs this add-on forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from diffusion.v1 import denoiser_pb2
from services.common.transport import local_peer
from services.denoiser.addons import AddonRegistry, BuildContext, Export, ReadTensor
from services.denoiser.addons.base import Addon, StepRows
from services.denoiser.cfg_link import CfgPartnerLink
from services.denoiser.guiders import UNCOND


@dataclass(frozen=True)
class CfgPartnerSpec:
    address: str
    peer: Any = None          # PeerInfo of the partner replica


class CfgPartnerAddon(Addon):
    name = "cfg_partner"
    takes = UNCOND            # the rows that are not this replica's to run

    def __init__(self, link: Any, weights_merged: Callable[[], bool]) -> None:
        self.link = link      # services.denoiser.cfg_link.CfgPartnerLink (or a stand-in)
        self.weights_merged = weights_merged

    def batch_key(self) -> Hashable | None:
        return "split"

    def before_model(self, rows: StepRows) -> StepRows:
        if rows.kinds[0] != UNCOND:
            raise ValueError(f"CFG partner rows must come first, got {rows.kinds}")
        self.link.send(rows.step, rows.only(UNCOND).sample, rows.timestep,
                       with_loras=self.weights_merged())
        return rows.without(UNCOND)

    def after_model(self, noise: torch.Tensor) -> torch.Tensor | None:
        uncond = self.link.poll()
        if uncond is None:
            return None
        return torch.cat([uncond.to(noise.device, noise.dtype), noise])

    def close(self, error: Exception | None) -> None:
        self.link.close()


class CfgPartnerKind:
    name = "cfg_partner"
    on_partner = False

    def __init__(self, runtime: Any, registry: AddonRegistry) -> None:
        self.runtime = runtime        # services.common.server.ServiceRuntime
        self.registry = registry      # to forward the request's other add-ons

    def decode(self, message: denoiser_pb2.CfgPartner, read: ReadTensor
               ) -> CfgPartnerSpec | None:
        return CfgPartnerSpec(message.address, message.peer) if message.address else None

    def encode(self, spec: CfgPartnerSpec, export: Export) -> denoiser_pb2.CfgPartner:
        return denoiser_pb2.CfgPartner(address=spec.address, peer=spec.peer)

    def build(self, spec: CfgPartnerSpec, ctx: BuildContext) -> CfgPartnerAddon | None:
        if UNCOND not in ctx.kinds or ctx.state is None:
            return None       # no unconditional rows: nothing to hand over
        runtime, rid = self.runtime, ctx.request_id

        def export(t: torch.Tensor) -> Any:
            return runtime.exporter.export(t, spec.peer, request_id=rid)

        uncond = ctx.without("cond")
        added = ctx.state.added_cond or {}
        per = ctx.embeds.shape[0] // len(ctx.kinds)
        opening = denoiser_pb2.CfgPassOpen(
            model=ctx.model, peer=local_peer(), total_steps=ctx.total_steps,
            num_images=ctx.num_images, prompt_embeds=export(uncond.embeds),
            added_cond={k: export(v[:per]) for k, v in added.items()},
            addons=self.registry.encode_for_partner(ctx.specs, export))
        link = CfgPartnerLink(runtime.channels, spec.address, spec.peer, rid, opening,
                              runtime.exporter, runtime.importer, ctx.timeout, ctx.engine.wake)
        return CfgPartnerAddon(link, ctx.weights_merged)
