"""What the requests of a load test ask for: the workflow mix and each workflow's parameters.

Workflows: ``txt2img``; ``controlnet`` (one ControlNet drawn from the list);
``lora`` (one LoRA drawn by its popularity); ``img2img``; ``edit`` (an inpainting
edit whose mask covers a drawn fraction of the image); ``controlnet_lora`` (one of
each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WORKFLOWS = ("txt2img", "controlnet", "lora", "img2img", "edit", "controlnet_lora")
DEFAULT_SLO_S = 10.0


@dataclass(frozen=True)
class WorkloadSpec:
    mix: dict[str, float] = field(default_factory=lambda: {"txt2img": 1.0})  # weights
    slos: dict[str, float] = field(default_factory=dict)  # seconds; missing -> DEFAULT_SLO_S
    model: str = "tiny-sd"
    edit_model: str = ""  # model of edit requests; empty = an inpainting model the gateway lists
    width: int = 0  # 0 = the model's default
    height: int = 0
    steps: int = 20
    guidance: float = 7.5
    loras: tuple[str, ...] = ("tiny-lora-r4", "tiny-lora-r8")
    lora_popularity: str = "zipf:1.0"  # "uniform" or "zipf:S" (rank r has weight 1 / r**S)
    lora_scale: float = 0.8
    controlnets: tuple[str, ...] = ("tiny-cn-a",)
    controlnet_scale: float = 1.0
    mask_ratio: tuple[float, float] = (0.1, 0.4)  # edit: masked fraction, drawn uniformly
    strength: float = 0.6  # img2img

    def check(self) -> None:
        """Raises ValueError naming the bad field."""
        unknown = sorted(set(self.mix) - set(WORKFLOWS))
        if unknown:
            raise ValueError(f"unknown workflow(s) {unknown}; known: {', '.join(WORKFLOWS)}")
        if not self.mix or any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("mix weights must be >= 0 with a positive sum")
        bad_slo = sorted(set(self.slos) - set(WORKFLOWS))
        if bad_slo:
            raise ValueError(f"SLO for unknown workflow(s) {bad_slo}")
        if any(not s > 0 for s in self.slos.values()):
            raise ValueError("SLOs must be > 0 seconds")
        if (self.mix.get("lora", 0) or self.mix.get("controlnet_lora", 0)) and not self.loras:
            raise ValueError("the mix has lora requests but no LoRA names were given")
        if ((self.mix.get("controlnet", 0) or self.mix.get("controlnet_lora", 0))
                and not self.controlnets):
            raise ValueError("the mix has controlnet requests but no ControlNet names were given")
        lo, hi = self.mask_ratio
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"mask ratio {lo}:{hi} must satisfy 0 < lo <= hi <= 1")
        if self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.width < 0 or self.height < 0 or self.width % 8 or self.height % 8:
            raise ValueError("width and height must be multiples of 8 (0 = model default)")
        if not 0 < self.strength <= 1:
            raise ValueError("strength must be in (0, 1]")
        lora_weights(self.lora_popularity, max(1, len(self.loras)))

    def slo(self, workflow: str) -> float:
        return self.slos.get(workflow, DEFAULT_SLO_S)

    def workflow_weights(self) -> tuple[tuple[str, ...], np.ndarray]:
        names = tuple(w for w in WORKFLOWS if self.mix.get(w, 0) > 0)
        weights = np.array([self.mix[w] for w in names], dtype=float)
        return names, weights / weights.sum()


def lora_weights(popularity: str, n: int) -> np.ndarray:
    """Probabilities of the ``n`` LoRAs in list order under ``popularity``."""
    if popularity == "uniform":
        weights: np.ndarray = np.ones(n)
    elif popularity.startswith("zipf:"):
        try:
            s = float(popularity.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad LoRA popularity {popularity!r}: zipf:S needs a number") from None
        if s < 0:
            raise ValueError("zipf exponent must be >= 0")
        weights = 1.0 / np.arange(1, n + 1) ** s
    else:
        raise ValueError(f"LoRA popularity {popularity!r} is not 'uniform' or 'zipf:S'")
    return weights / weights.sum()
