"""Stage 2: the VAE (4 latent channels as SD1.5's; the side shrinks by 2 per block after the first).

Trained on images of every style (plain, outlined, striped) so the LoRAs'
styles can be decoded too, with a reconstruction loss (L1 + squared error,
pixels on and near the shape weighing more), the error of the mean colour of
the shape and of the background, and a small KL term. Afterwards
its ``scaling_factor`` is set so that scaled latents of the data set have unit
standard deviation, as SD1.5's 0.18215 does for its VAE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from training import architecture, shapes
from training.loop import Stage, StageSpec, stage_generator

KL_WEIGHT = 1e-4
SHAPE_WEIGHT = 10.0
COLOUR_WEIGHT = 1.0
INITIAL_LOGVAR = -6.0
STYLE_ODDS = (0.5, 0.25, 0.25)  # plain, outlined, striped


def scene_batch(seed: int, stage: str, step: int, batch: int) -> list[shapes.Scene]:
    rng = shapes.batch_rng(seed, stage, step)
    return [shapes.sample_scene(rng, style=str(rng.choice(shapes.STYLES, p=STYLE_ODDS)))
            for _ in range(batch)]


def image_batch(seed: int, stage: str, step: int, batch: int, side: int) -> torch.Tensor:
    return shapes.to_tensor_batch([shapes.render(s, side)
                                   for s in scene_batch(seed, stage, step, batch)])


def pixel_weights(scenes: list[shapes.Scene], side: int) -> torch.Tensor:
    """The shape and a few pixels around it count SHAPE_WEIGHT times the background: the
    shape is what is hard to reconstruct, and it covers a few percent of the image."""
    masks = np.stack([shapes.shape_mask(s, side) for s in scenes]) > 0
    near = ndimage.binary_dilation(masks, structure=np.ones((1, 5, 5)))
    return torch.from_numpy(1.0 + (SHAPE_WEIGHT - 1.0) * near.astype(np.float32))[:, None]


def _region_means(decoded: torch.Tensor, masks: np.ndarray) -> torch.Tensor:
    weights = torch.from_numpy(masks.astype(np.float32))[:, None]
    return (decoded * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1.0)


def colour_error(decoded: torch.Tensor, scenes: list[shapes.Scene], side: int) -> torch.Tensor:
    """Mean absolute error of the mean colour of each region: the shape's coloured pixels, and
    each half of the background away from the shape. A per-pixel loss lets similar hues blur
    into one; weighing the shape alone lets the background drift to pay for it."""
    ink = np.stack([shapes.ink_mask(s, side) for s in scenes]) > 0.5
    away = ~ndimage.binary_dilation(np.stack([shapes.shape_mask(s, side) for s in scenes]) > 0,
                                    structure=np.ones((1, 5, 5)))
    top = np.zeros_like(away)
    top[:, : side // 2] = True
    errors = [_region_means(decoded, ink) - _colours([shapes.COLOURS[s.colour] for s in scenes])]
    for half, rows in ((0, top), (1, ~top)):
        errors.append(_region_means(decoded, away & rows)
                      - _colours([shapes.BACKGROUNDS[s.background][half] for s in scenes]))
    return torch.stack([e.abs().mean() for e in errors]).mean()


def _colours(rgb: list[tuple[int, int, int]]) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1.0


def train_vae(work: Path, sizes: architecture.ModelSizes, seed: int, steps: int,
              batch: int = 8, quiet: bool = False) -> Stage:
    torch.manual_seed(seed + 1)
    vae = architecture.vae(sizes).train()
    with torch.no_grad():  # start the posterior narrow: latents carry signal from step 0
        vae.quant_conv.bias[vae.config.latent_channels:] = INITIAL_LOGVAR
    spec = StageSpec("vae", steps=steps, lr=1.5e-3, seed=seed,
                     settings={"batch": batch, "kl_weight": KL_WEIGHT,
                               "initial_logvar": INITIAL_LOGVAR,
                               "shape_weight": SHAPE_WEIGHT, "colour_weight": COLOUR_WEIGHT,
                               "image_size": sizes.image_size,
                               "channels": list(sizes.vae_channels),
                               "norm_groups": sizes.vae_norm_groups})

    def loss_at(step: int) -> torch.Tensor:
        scenes = scene_batch(seed, spec.name, step, batch)
        images = shapes.to_tensor_batch([shapes.render(s, sizes.image_size) for s in scenes])
        posterior = vae.encode(images).latent_dist
        latents = posterior.sample(generator=stage_generator(seed, spec.name, step))
        decoded = vae.decode(latents).sample
        error = decoded - images
        weights = pixel_weights(scenes, sizes.image_size)
        recon = (weights * (error.abs() + error.pow(2))).mean() / weights.mean()
        return (recon + COLOUR_WEIGHT * colour_error(decoded, scenes, sizes.image_size)
                + KL_WEIGHT * posterior.kl().mean() / latents[0].numel())

    stage = Stage(spec, work, dict(vae.named_parameters()), loss_at, quiet)
    stage.run()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.copy_(stage.final_weights()[name])
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scaling(vae, seed, sizes.image_size))
    vae.save_pretrained(stage.dir / "model", safe_serialization=True)
    return stage


def latent_scaling(vae, seed: int, side: int, count: int = 256) -> float:  # type: ignore[no-untyped-def]
    """1 / the standard deviation of the latents' means over a seeded sample of images."""
    with torch.no_grad():
        means = torch.cat([vae.encode(image_batch(seed, "vae_scale", i, 32, side)).latent_dist.mean
                           for i in range(count // 32)])
    return round(float(1.0 / means.std()), 5)


def load_vae(work: Path):  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(work / "vae" / "model", local_files_only=True).eval()
    vae.requires_grad_(False)
    return vae
