"""What a training run does: its stages, their steps and batch sizes, in order.

``shipped`` made the weights in ``assets/shapes-models``; ``quick`` trains the
same stages at toy widths and a few steps (tests).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from training import architecture

STAGES = ("text_encoder", "vae", "unet", "inpainting", "controlnet", "lora_outlined",
          "lora_striped")


@dataclass(frozen=True)
class Recipe:
    name: str
    sizes: architecture.ModelSizes
    steps: dict[str, int]
    batch: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SHIPPED = Recipe(
    name="shipped", sizes=architecture.SHIPPED,
    steps={"text_encoder": 250, "vae": 3000, "unet": 3000, "inpainting": 600, "controlnet": 800,
           "lora_outlined": 400, "lora_striped": 400},
    batch={"text_encoder": 64, "vae": 8, "unet": 32, "inpainting": 32, "controlnet": 32,
           "lora_outlined": 16, "lora_striped": 16},
)
QUICK = Recipe(
    name="quick", sizes=architecture.QUICK,
    steps={stage: 4 for stage in STAGES},
    batch={stage: 4 for stage in STAGES},
)
RECIPES = {"shipped": SHIPPED, "quick": QUICK}


def with_steps(recipe: Recipe, overrides: dict[str, int]) -> Recipe:
    unknown = set(overrides) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
    return replace(recipe, steps={**recipe.steps, **overrides})


def run_stages(recipe: Recipe, work: Path, seed: int, stages: tuple[str, ...] = STAGES,
               quiet: bool = False) -> dict[str, list[list[float]]]:
    """Runs (or resumes, or skips when finished) each stage; returns their loss curves."""
    from training import addon_stages, text_stage, unet_stage, vae_stage
    from training.diffusion_data import Frozen

    curves: dict[str, list[list[float]]] = {}
    steps, batch, sizes = recipe.steps, recipe.batch, recipe.sizes
    if "text_encoder" in stages:
        curves["text_encoder"] = text_stage.train_text_encoder(
            work, sizes, seed, steps["text_encoder"], batch["text_encoder"], quiet).losses
    if "vae" in stages:
        curves["vae"] = vae_stage.train_vae(work, sizes, seed, steps["vae"], batch["vae"],
                                            quiet).losses
    rest = [s for s in stages if s not in ("text_encoder", "vae")]
    if not rest:
        return curves
    frozen = Frozen(vae_stage.load_vae(work), *text_stage.load_text_encoder(work),
                    side=sizes.image_size)
    for stage in rest:
        if stage == "unet":
            run = unet_stage.train_unet(work, frozen, sizes, seed, steps[stage], batch[stage],
                                        quiet)
        elif stage == "inpainting":
            run = unet_stage.train_inpainting(work, frozen, seed, steps[stage], batch[stage],
                                              quiet)
        elif stage == "controlnet":
            run = addon_stages.train_controlnet(work, frozen, seed, steps[stage], batch[stage],
                                                quiet)
        else:
            run = addon_stages.train_lora(work, frozen, stage.removeprefix("lora_"), seed,
                                          steps[stage], batch[stage], quiet)
        curves[stage] = run.losses
    return curves
