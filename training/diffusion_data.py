"""Batches for the denoiser stages, and the noise-prediction loss they share.

A batch is drawn from the seeded scene sampler (held-out combinations never
appear), rendered, encoded by the frozen VAE into scaled latents, and its
captions by the frozen text encoder; a tenth of the captions are empty, as
classifier-free guidance needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training import architecture, shapes

CAPTION_DROP = 0.3
EMPTY_CAPTION = 0.1
MIN_SNR_GAMMA = 5.0


@dataclass
class Batch:
    scenes: list[shapes.Scene]
    captions: list[str]
    images: torch.Tensor  # [-1, 1]
    latents: torch.Tensor  # scaled
    text: torch.Tensor  # encoder hidden states
    rng: np.random.Generator  # the step's generator, for what a stage adds
    extra: dict[str, Any] = field(default_factory=dict)


class Frozen:
    """The trained VAE and text encoder that the later stages condition on."""

    def __init__(self, vae, tokenizer, text_encoder, side: int) -> None:  # type: ignore[no-untyped-def]
        self.vae = vae
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.side = side
        self.scaling = float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        dist = self.vae.encode(images).latent_dist
        latents = dist.mean if generator is None else dist.sample(generator=generator)
        return latents * self.scaling

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        return self.text_encoder(architecture.tokenize(self.tokenizer, captions))[0]

    def batch(self, seed: int, stage: str, step: int, size: int, style_odds=(1.0, 0.0, 0.0),  # type: ignore[no-untyped-def]
              caption_drop: float = CAPTION_DROP, generator: torch.Generator | None = None
              ) -> Batch:
        rng = shapes.batch_rng(seed, stage, step)
        scenes = [shapes.sample_scene(rng, style=str(rng.choice(shapes.STYLES, p=style_odds)))
                  for _ in range(size)]
        captions = ["" if rng.random() < EMPTY_CAPTION else
                    shapes.caption(s, rng, caption_drop, keep_style=bool(rng.random() < 0.5))
                    for s in scenes]
        images = shapes.to_tensor_batch([shapes.render(s, self.side) for s in scenes])
        return Batch(scenes, captions, images, self.encode_images(images, generator),
                     self.encode_text(captions), rng)


def noise_loss(unet, batch: Batch, generator: torch.Generator, schedule,  # type: ignore[no-untyped-def]
               extra_channels: torch.Tensor | None = None,
               residuals: Any = None) -> torch.Tensor:
    """Epsilon-prediction loss at uniform timesteps, weighted by min(SNR, 5) / SNR."""
    noisy, t, noise = noisy_input(batch, generator, schedule)
    model_input = noisy if extra_channels is None else torch.cat([noisy, extra_channels], dim=1)
    kwargs = {}
    if residuals is not None:
        kwargs = dict(down_block_additional_residuals=residuals[0],
                      mid_block_additional_residual=residuals[1])
    pred = unet(model_input, t, encoder_hidden_states=batch.text, **kwargs).sample
    alphas = schedule.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    return (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()


def noisy_input(batch: Batch, generator: torch.Generator, schedule  # type: ignore[no-untyped-def]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy latents, timesteps, noise) of one step, for losses against a teacher."""
    noise = torch.randn(batch.latents.shape, generator=generator)
    t = torch.randint(0, schedule.config.num_train_timesteps, (batch.latents.shape[0],),
                      generator=generator)
    return schedule.add_noise(batch.latents, noise, t), t, noise
