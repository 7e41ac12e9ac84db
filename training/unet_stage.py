"""Stages 3 and 4: the text-to-image UNet, then the inpainting UNet made from it.

The inpainting UNet takes 9 channels (noisy latents, the mask, the masked
image's latents, in the order diffusers' inpainting pipeline concatenates
them). It starts as a copy of the trained UNet whose first convolution reads
the extra channels with zero weights, and learns to fill masks: a box around
the shape, a random box, or the whole image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training import architecture, shapes
from training.diffusion_data import Batch, Frozen, noise_loss
from training.loop import Stage, StageSpec, stage_generator

EMA_DECAY = 0.998


def train_unet(work: Path, frozen: Frozen, sizes: architecture.ModelSizes, seed: int,
               steps: int, batch: int = 32, quiet: bool = False) -> Stage:
    torch.manual_seed(seed + 2)
    unet = architecture.unet(sizes).train()
    schedule = architecture.training_noise_schedule()
    spec = StageSpec("unet", steps=steps, lr=1e-3, seed=seed, ema_decay=EMA_DECAY,
                     settings={"batch": batch, "config": architecture.unet_config(sizes)})

    def loss_at(step: int) -> torch.Tensor:
        generator = stage_generator(seed, spec.name, step)
        data = frozen.batch(seed, spec.name, step, batch, generator=generator)
        return noise_loss(unet, data, generator, schedule)

    return _run_and_save(spec, work, unet, loss_at, quiet)


def _run_and_save(spec: StageSpec, work: Path, unet, loss_at, quiet: bool) -> Stage:  # type: ignore[no-untyped-def]
    stage = Stage(spec, work, dict(unet.named_parameters()), loss_at, quiet)
    stage.run()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.copy_(stage.final_weights()[name])
    unet.eval().save_pretrained(stage.dir / "model", safe_serialization=True)
    return stage


def load_unet(work: Path, stage: str = "unet"):  # type: ignore[no-untyped-def]
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(work / stage / "model",
                                                local_files_only=True).eval()


def inpainting_from(unet):  # type: ignore[no-untyped-def]
    """A 9-channel copy of ``unet`` that computes what ``unet`` does until trained."""
    from diffusers import UNet2DConditionModel

    config = dict(unet.config)
    config["in_channels"] = 9
    inpaint = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat(
        [weight, torch.zeros(weight.shape[0], 5, *weight.shape[2:])], dim=1)
    inpaint.load_state_dict(state)
    return inpaint


def training_mask(scene: shapes.Scene, rng: np.random.Generator, side: int) -> np.ndarray:
    """1 where the image is to be repainted."""
    mask = np.zeros((side, side), dtype=np.float32)
    kind = rng.random()
    if kind < 0.15:
        mask[:] = 1
    elif kind < 0.65:
        cx, cy, r = shapes.geometry(scene, side)
        pad = r * 1.3 + rng.uniform(2, side / 8)
        mask[max(0, int(cy - pad)):int(cy + pad) + 1, max(0, int(cx - pad)):int(cx + pad) + 1] = 1
    else:
        h, w = (int(v) for v in rng.integers(side // 4, 3 * side // 4 + 1, size=2))
        top, left = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
        mask[top:top + h, left:left + w] = 1
    return mask


def inpainting_inputs(frozen: Frozen, data: Batch, masks: torch.Tensor) -> torch.Tensor:
    """The mask and masked-image latents, prepared as diffusers' inpainting pipeline does."""
    binary = (masks >= 0.5).float()
    masked = data.images * (binary < 0.5)
    latent_side = data.latents.shape[-1]
    small = torch.nn.functional.interpolate(binary, size=(latent_side, latent_side))
    return torch.cat([small, frozen.encode_images(masked)], dim=1)


def train_inpainting(work: Path, frozen: Frozen, seed: int, steps: int, batch: int = 32,
                     quiet: bool = False) -> Stage:
    unet = inpainting_from(load_unet(work)).train()
    schedule = architecture.training_noise_schedule()
    spec = StageSpec("inpainting", steps=steps, lr=3e-4, seed=seed, ema_decay=EMA_DECAY,
                     settings={"batch": batch}, warmup=20)

    def loss_at(step: int) -> torch.Tensor:
        generator = stage_generator(seed, spec.name, step)
        data = frozen.batch(seed, spec.name, step, batch, generator=generator)
        masks = torch.from_numpy(np.stack([training_mask(s, data.rng, frozen.side)
                                           for s in data.scenes]))[:, None]
        return noise_loss(unet, data, generator, schedule,
                          extra_channels=inpainting_inputs(frozen, data, masks))

    return _run_and_save(spec, work, unet, loss_at, quiet)
