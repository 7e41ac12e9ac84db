"""Guidance: which rows a step runs and how their predictions combine into one.

A guider is chosen per request. :class:`ClassifierFreeGuidance` runs an unconditional and a
conditional row per image (unconditional first, as the pipelines order them) and combines
``u + g * (c - u)``; :class:`NoGuidance` runs the conditional rows alone. The sampler asks the
guider for the rows' order and hands it the model's output; nothing else knows the formula.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

UNCOND, COND = "uncond", "cond"


class Guider(Protocol):
    @property
    def kinds(self) -> tuple[str, ...]:
        """Row groups in batch order; each group holds one row per image."""
        ...

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        """The model output of every row -> one noise prediction per image."""
        ...


@dataclass(frozen=True)
class NoGuidance:
    kinds: tuple[str, ...] = (COND,)

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        return noise


@dataclass(frozen=True)
class ClassifierFreeGuidance:
    scale: float
    kinds: tuple[str, ...] = (UNCOND, COND)

    def combine(self, noise: torch.Tensor) -> torch.Tensor:
        uncond, cond = noise.chunk(2)
        return uncond + self.scale * (cond - uncond)


def guider_for(guidance_scale: float) -> Guider:
    """CFG when the scale is above 1, as the pipelines decide."""
    if guidance_scale > 1.0:
        return ClassifierFreeGuidance(guidance_scale)
    return NoGuidance()
