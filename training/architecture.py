"""The shapes model's components: SD1.5-shaped diffusers and transformers models, small.

Widths come from a :class:`ModelSizes`; ``SHIPPED`` made the weights in the
repository, ``QUICK`` is for tests (seconds on a CPU). The tokenizer is the
project's offline byte-level CLIP tokenizer, so any prompt encodes without a
download.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from services.common.tiny_model import BOS, EOS, _tokenizer, byte_vocab


@dataclass(frozen=True)
class ModelSizes:
    image_size: int  # pixels; latents are ``latent_factor`` times smaller
    text_hidden: int
    text_layers: int
    vae_channels: tuple[int, ...]
    unet_channels: tuple[int, ...]
    unet_heads: int  # attention heads per transformer (diffusers' ``attention_head_dim``)
    norm_groups: int = 8
    # GroupNorm normalises each group over the whole image, and the last one sits right
    # before the VAE's output layer: with few channels per group the shape's and the
    # background's colours are normalised together and cannot both come out right (eight
    # groups of one channel trained 2.5x slower than two of four; with two of four, the
    # shapes' hues merged, or, pushed apart, the backgrounds drifted). Hence 2 groups of
    # 16 channels at full resolution (vae_channels[0]).
    vae_norm_groups: int = 2
    # Which UNet levels (highest resolution first) have cross-attention; the mid block
    # always has it. Self-attention over a 16x16 latent costs more than the rest of the
    # level on a CPU, so the shipped UNet attends from its 8x8 level.
    unet_cross_attention: tuple[bool, ...] = (True, False)

    @property
    def latent_factor(self) -> int:
        """Pixels per latent: each VAE block after the first halves the side."""
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.latent_factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# 64x64 images, 16x16x4 latents (a 4x VAE: 8x8 latents left a small star two latent
# pixels wide, and the VAE's own round trip read the right shape two times in three).
SHIPPED = ModelSizes(image_size=64, text_hidden=64, text_layers=3,
                     vae_channels=(16, 32, 32), unet_channels=(32, 64, 96), unet_heads=4,
                     unet_cross_attention=(False, True, False))
QUICK = ModelSizes(image_size=32, text_hidden=32, text_layers=1,
                   vae_channels=(8, 8, 8, 8), unet_channels=(16, 32), unet_heads=4)


def tokenizer():  # type: ignore[no-untyped-def]
    return _tokenizer()


def tokenize(tok, captions: list[str]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return tok(captions, padding="max_length", max_length=tok.model_max_length,
               truncation=True, return_tensors="pt").input_ids


def text_encoder(sizes: ModelSizes):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = byte_vocab()
    config = CLIPTextConfig(
        hidden_size=sizes.text_hidden, intermediate_size=4 * sizes.text_hidden,
        num_attention_heads=4, num_hidden_layers=sizes.text_layers, vocab_size=len(vocab),
        max_position_embeddings=77, projection_dim=sizes.text_hidden,
        bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS],
    )
    return CLIPTextModel(config)


def vae(sizes: ModelSizes):  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    blocks = len(sizes.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=sizes.image_size,
        block_out_channels=sizes.vae_channels, layers_per_block=1,
        norm_num_groups=sizes.vae_norm_groups,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
    )


def unet_config(sizes: ModelSizes, in_channels: int = 4) -> dict[str, Any]:
    """Cross-attention at the levels ``sizes.unet_cross_attention`` names and in the mid block."""
    if len(sizes.unet_cross_attention) != len(sizes.unet_channels):
        raise ValueError("unet_cross_attention needs one entry per UNet level")
    down = tuple("CrossAttnDownBlock2D" if cross else "DownBlock2D"
                 for cross in sizes.unet_cross_attention)
    return dict(
        sample_size=sizes.latent_size, in_channels=in_channels, out_channels=4,
        block_out_channels=tuple(sizes.unet_channels), layers_per_block=1,
        down_block_types=down, up_block_types=tuple(d.replace("Down", "Up") for d in down[::-1]),
        cross_attention_dim=sizes.text_hidden, attention_head_dim=sizes.unet_heads,
        norm_num_groups=sizes.norm_groups,
    )


def unet(sizes: ModelSizes, in_channels: int = 4):  # type: ignore[no-untyped-def]
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(sizes, in_channels))


def scheduler():  # type: ignore[no-untyped-def]
    """SD1.5's sampling scheduler (PNDM, as the tiny model and SD1.5 ship)."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                         set_alpha_to_one=False)


def training_noise_schedule():  # type: ignore[no-untyped-def]
    """The same betas, for adding noise in training."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000)
