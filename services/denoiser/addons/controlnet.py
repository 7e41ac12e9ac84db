"""ControlNets beside the base model, as a step-loop add-on.

Each of a request's ControlNets runs on a ControlNet replica over one stream
(:class:`~services.denoiser.controlnet_link.ControlNetLink`). Parallel (the default): the
step's inputs go to every replica before the model runs, and their residuals are read between
the model's halves, so the down and mid blocks run meanwhile. Serial: the residuals are read
before the model starts; the result is the same. Stale residuals (an approximation): see
:mod:`services.denoiser.controlnet_set`. Outside a ControlNet's guidance range its scale is 0.

A Flux ControlNet reads the control image's latents, drawn by the sampler from the image's
VAE moments before its noise (:meth:`ControlNetRequest.latent_moments`), and the rows' pooled
embeddings, guidance and shared position ids; its residuals join the transformer after its
first block, so the transformer reads them before it starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from diffusion.v1 import denoiser_pb2
from services.common.errors import InvalidArgument
from services.common.transport import local_peer
from services.denoiser.addons import BuildContext, Export, ReadTensor
from services.denoiser.addons.base import Addon, Residuals, StepRows
from services.denoiser.controlnet_link import ControlNetLink
from services.denoiser.controlnet_set import ControlNetSet, StepLink


@dataclass(frozen=True)
class ControlNetSpec:
    name: str
    address: str
    cond_image: torch.Tensor | None  # [1, 3, H, W] in [0, 1]
    scale: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    peer: Any = None          # PeerInfo of the ControlNet replica
    # Flux, instead of cond_image: the control image's VAE moments, which the sampler
    # draws (and packs) with the request's generators before its initial noise
    cond_moments: torch.Tensor | None = None


@dataclass(frozen=True)
class ControlNetRequest:
    controlnets: tuple[ControlNetSpec, ...]
    stale: bool = False       # step t uses step t-1's residuals

    def latent_moments(self) -> list[torch.Tensor]:
        """The moments the sampler draws latents from before its noise, in ControlNet
        order, as the Flux ControlNet pipeline encodes its control images first."""
        return [c.cond_moments for c in self.controlnets if c.cond_moments is not None]


def step_scales(specs: tuple[ControlNetSpec, ...], steps: int) -> list[list[float]]:
    """Per step, each ControlNet's conditioning scale: 0 outside its guidance range."""
    return [[c.scale * (1.0 - float(i / steps < c.guidance_start
                                    or (i + 1) / steps > c.guidance_end)) for c in specs]
            for i in range(steps)]


class ControlNetAddon(Addon):
    name = "controlnet"

    def __init__(self, controls: ControlNetSet, scales: list[list[float]],
                 parallel: bool = True) -> None:
        self.controls = controls
        self.scales = scales
        self.parallel = parallel
        self._early: Residuals | None = None

    def before_model(self, rows: StepRows) -> StepRows:
        self.controls.send(rows.step, rows.latents, rows.timestep, self.scales[rows.step])
        if not self.parallel:
            self._early = self.controls.residuals()
        return rows

    def residuals(self) -> Residuals | None:
        if not self.parallel:
            return self._early
        return self.controls.residuals()

    def metadata(self) -> dict[str, str]:
        return {"controlnet_wait_ms": f"{self.controls.wait_s * 1e3:.1f}"}

    def close(self, error: Exception | None) -> None:
        self.controls.close()


class ControlNetKind:
    name = "controlnet"
    on_partner = True

    def __init__(self, runtime: Any, parallel: bool = True) -> None:
        self.runtime = runtime       # services.common.server.ServiceRuntime
        self.parallel = parallel

    def decode(self, message: denoiser_pb2.ControlNets, read: ReadTensor
               ) -> ControlNetRequest | None:
        specs = []
        for i, c in enumerate(message.controlnets):
            where = f"controlnet.controlnets[{i}]"
            image = read(c.cond_image, f"{where}.cond_image")
            moments = read(c.cond_moments, f"{where}.cond_moments")
            if (image is None) == (moments is None):
                raise InvalidArgument("give the control image or (Flux) its VAE moments, "
                                      "one of them", field=f"{where}.cond_image")
            specs.append(ControlNetSpec(name=c.name, address=c.address, peer=c.peer,
                                        cond_image=image, scale=c.scale,
                                        guidance_start=c.guidance_start,
                                        guidance_end=c.guidance_end or 1.0,
                                        cond_moments=moments))
        return ControlNetRequest(tuple(specs), message.stale) if specs else None

    def encode(self, spec: ControlNetRequest, export: Export) -> denoiser_pb2.ControlNets:
        return denoiser_pb2.ControlNets(stale=spec.stale, controlnets=[
            denoiser_pb2.ControlNetAttachment(
                name=c.name, address=c.address, peer=c.peer, scale=c.scale,
                guidance_start=c.guidance_start, guidance_end=c.guidance_end,
                cond_image=export(c.cond_image) if c.cond_image is not None else None,
                cond_moments=export(c.cond_moments) if c.cond_moments is not None else None)
            for c in spec.controlnets])

    def build(self, spec: ControlNetRequest, ctx: BuildContext) -> ControlNetAddon:
        links: list[StepLink] = []
        runtime = self.runtime
        drawn = iter(ctx.drawn.get(self.name, []))
        try:
            for i, c in enumerate(spec.controlnets):
                links.append(ControlNetLink(
                    runtime.channels, c.address, ctx.request_id, c.name,
                    self._cond(c, ctx, drawn, i), ctx.embeds, runtime.exporter,
                    runtime.importer, c.peer, local_peer(), ctx.timeout,
                    added_cond=ctx.added_cond, shared=ctx.shared))
        except Exception:
            for link in links:
                link.close()
            raise
        return ControlNetAddon(ControlNetSet(links, ctx.total_steps, spec.stale),
                               step_scales(spec.controlnets, ctx.total_steps), self.parallel)

    @staticmethod
    def _cond(c: ControlNetSpec, ctx: BuildContext, drawn: Iterator[torch.Tensor], i: int
              ) -> torch.Tensor:
        """What the ControlNet reads for the work's rows: the control image once per row, or
        the latents the sampler drew from its moments (one row per image)."""
        if c.cond_image is not None:
            return torch.cat([c.cond_image] * ctx.embeds.shape[0])
        latents = next(drawn, None)
        if latents is None:
            raise InvalidArgument(f"{ctx.model!r} takes control images, not their VAE moments",
                                  field=f"controlnet.controlnets[{i}].cond_moments")
        return latents
