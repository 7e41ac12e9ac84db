"""The add-ons of the denoise node, one module each, and the registry that builds them.

Each add-on module defines the step-loop side (an :class:`~services.denoiser.addons.base.Addon`)
and an :class:`AddonKind` that owns its part of the wire: the field of the ``Addons`` proto
message it reads, how that field becomes a typed spec (once, at the service boundary), how the
spec goes back on the wire for a CFG partner, and how the add-on is built for a prepared work.
The servicer asks the registry, never a particular add-on.

Adding an add-on: a module with its Addon and AddonKind, one field in ``Addons``
(protos/diffusion/v1/denoiser.proto), one line in the denoiser's list of kinds, and its
attachment on the gateway side (:mod:`services.gateway.attachments`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

from diffusion.v1 import denoiser_pb2, tensor_pb2
from services.denoiser.addons.base import Addon

log = logging.getLogger("dfleet.denoiser")

ReadTensor = Callable[[tensor_pb2.TensorRef, str], torch.Tensor | None]
Export = Callable[[torch.Tensor], tensor_pb2.TensorRef]


@dataclass
class BuildContext:
    """What an add-on may know about the work it is built for."""

    request_id: str
    model: str
    num_inference_steps: int
    total_steps: int                     # steps the work will run (after the strength cut)
    kinds: tuple[str, ...]               # row groups this replica runs for the work
    embeds: torch.Tensor                 # their text embeddings, in row order
    num_images: int
    timeout: float | None                # time left, for the streams the add-ons open
    engine: Any                          # the DenoiserEngine (load_unet, add, wake)
    specs: dict[str, Any]                # every add-on spec of the work
    state: Any = None                    # the RequestState (None on a CFG partner)
    partner: bool = False                # built on a CFG partner, for the requester's rows
    follow_weights: Callable[[], bool] | None = None  # partner: the requester merged LoRAs
    weights_merged: Callable[[], bool] = field(default=lambda: False)
    added_cond: dict[str, torch.Tensor] | None = None  # their added conditioning (SDXL)
    shared: dict[str, torch.Tensor] = field(default_factory=dict)  # the same for every row
    # latents an add-on's spec asked the sampler to draw before its noise, by add-on name
    drawn: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def without(self, kind: str) -> BuildContext:
        keep = [i for i, k in enumerate(self.kinds) if k != kind]
        per = self.embeds.shape[0] // len(self.kinds)

        def rows(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[g * per:(g + 1) * per] for g in keep])
        return replace(self, kinds=tuple(k for k in self.kinds if k != kind),
                       embeds=rows(self.embeds),
                       added_cond={k: rows(v) for k, v in self.added_cond.items()}
                       if self.added_cond else None)


class AddonKind(Protocol):
    name: str            # its field in the Addons message and its key in DenoiseJob.addons
    on_partner: bool     # a CFG partner runs it for the requester's unconditional rows too

    def decode(self, message: Any, read: ReadTensor) -> Any | None:
        """The field's message -> a typed spec (None: the field asks for nothing)."""
        ...

    def encode(self, spec: Any, export: Export) -> Any:
        """The spec -> the field's message, its tensors exported for a partner."""
        ...

    def build(self, spec: Any, ctx: BuildContext) -> Addon | None:
        """The add-on for one prepared work (None: nothing to attach after all)."""
        ...


class AddonRegistry:
    """The denoiser's add-on kinds, in the order their hooks run."""

    def __init__(self, kinds: list[AddonKind]) -> None:
        self.kinds = kinds

    def decode(self, message: denoiser_pb2.Addons, read: ReadTensor) -> dict[str, Any]:
        specs: dict[str, Any] = {}
        for kind in self.kinds:
            if message.HasField(kind.name):  # type: ignore[arg-type]
                spec = kind.decode(getattr(message, kind.name), read)
                if spec is not None:
                    specs[kind.name] = spec
        return specs

    def encode_for_partner(self, specs: dict[str, Any], export: Export) -> denoiser_pb2.Addons:
        message = denoiser_pb2.Addons()
        for kind in self.kinds:
            if kind.on_partner and kind.name in specs:
                getattr(message, kind.name).CopyFrom(kind.encode(specs[kind.name], export))
        return message

    def build(self, specs: dict[str, Any], ctx: BuildContext) -> list[Addon]:
        """The work's add-ons in hook order; closes what was built if one fails."""
        built: list[Addon] = []
        ctx.weights_merged = lambda: any(
            (p := a.weight_patch()) is not None and bool(p.patch) for a in built)
        try:
            for kind in self.kinds:
                if kind.name not in specs or (ctx.partner and not kind.on_partner):
                    continue
                addon = kind.build(specs[kind.name], ctx)
                if addon is None:
                    continue
                built.append(addon)
                takes = getattr(addon, "takes", "")
                if takes:  # the rows it takes are not this replica's to run
                    ctx = ctx.without(takes)
        except BaseException as exc:
            for addon in built:
                try:
                    addon.close(exc if isinstance(exc, Exception) else None)
                except Exception:  # noqa: BLE001 - the build error is what matters
                    log.warning("closing add-on %s failed", addon.name, exc_info=True)
            raise
        return built
