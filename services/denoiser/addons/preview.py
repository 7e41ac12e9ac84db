"""Previews: the latents every N steps, sent with the step's progress (the gateway decodes)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffusion.v1 import denoiser_pb2
from services.denoiser.addons import BuildContext, Export, ReadTensor
from services.denoiser.addons.base import Addon


@dataclass(frozen=True)
class PreviewSpec:
    every: int


class PreviewAddon(Addon):
    name = "preview"

    def __init__(self, every: int) -> None:
        self.every = every

    def step_outputs(self, latents: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        return {"preview_latents": latents.clone()} if step % self.every == 0 else {}


class PreviewKind:
    name = "preview"
    on_partner = False

    def decode(self, message: denoiser_pb2.Preview, read: ReadTensor) -> PreviewSpec | None:
        return PreviewSpec(message.every) if message.every else None

    def encode(self, spec: PreviewSpec, export: Export) -> denoiser_pb2.Preview:
        return denoiser_pb2.Preview(every=spec.every)

    def build(self, spec: PreviewSpec, ctx: BuildContext) -> PreviewAddon:
        return PreviewAddon(spec.every)
