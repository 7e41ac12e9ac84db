"""A seeded, randomly initialised SDXL-shaped tree: the real SDXL component classes and block
layout (two text encoders, pooled embeddings, ``text_time`` added conditioning, a
``DownBlock2D`` first), at toy widths.

    ROOT/tiny-sdxl/                 StableDiffusionXLPipeline folder
    ROOT/tiny-sdxl-inpainting/      the same with a 9-channel UNet
    ROOT/controlnets/tiny-sdxl-cn/, tiny-sdxl-cn-b/   SDXL ControlNets (outputs re-randomised)
    ROOT/loras/tiny-sdxl-lora.safetensors, tiny-sdxl-lora-b.safetensors
    ROOT/ip_adapters/tiny-sdxl-ip-adapter/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TEXT_WIDTH = 32            # each text encoder's hidden width; cross attention sees 2 x 32
TIME_EMBED = 8             # addition_time_embed_dim: 6 time ids x 8 + 32 pooled = 80


def _unet(in_channels: int) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_WIDTH,
        cross_attention_dim=2 * TEXT_WIDTH, norm_num_groups=8).eval()


def _text_encoders(vocab: dict[str, int], bos: str, eos: str) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config() -> Any:
        return CLIPTextConfig(hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
                              num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab),
                              max_position_embeddings=77, projection_dim=TEXT_WIDTH,
                              bos_token_id=vocab[bos], eos_token_id=vocab[eos],
                              pad_token_id=vocab[eos])
    return CLIPTextModel(config()).eval(), CLIPTextModelWithProjection(config()).eval()


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    # SDXL base's own scheduler configuration
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", timestep_spacing="leading",
                                  steps_offset=1, interpolation_type="linear")


def write_sdxl_tree(root: Path, seed: int, vae: Any, tokenizer: Any, vocab: dict[str, int],
                    bos: str, eos: str) -> None:
    """The SDXL pipelines, ControlNet and LoRA under ``root`` (the SD tree's VAE and
    tokenizer are reused: SDXL's have the same classes)."""
    from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    from services.common.tiny_model import PRESETS, _controlnet, _save_ip_adapter, _save_lora

    torch.manual_seed(seed)
    encoder, encoder_2 = _text_encoders(vocab, bos, eos)
    unet, inpaint_unet = _unet(4), _unet(9)
    for name, cls, model in (("tiny-sdxl", StableDiffusionXLPipeline, unet),
                             ("tiny-sdxl-inpainting", StableDiffusionXLInpaintPipeline,
                              inpaint_unet)):
        pipe = cls(vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer,
                   tokenizer_2=tokenizer, unet=model, scheduler=_scheduler())
        pipe.save_pretrained(root / name, safe_serialization=True)
    for name in ("tiny-sdxl-cn", "tiny-sdxl-cn-b"):
        _controlnet(unet).save_pretrained(root / "controlnets" / name, safe_serialization=True)
    _save_lora(root / "loras" / "tiny-sdxl-lora.safetensors", unet, 4,
               ["to_q", "to_k", "to_v", "to_out.0"], seed + 1)
    _save_lora(root / "loras" / "tiny-sdxl-lora-b.safetensors", unet, 8,
               ["to_k", "to_v", "proj_in", "proj_out"], seed + 2)
    _save_ip_adapter(root / "ip_adapters" / "tiny-sdxl-ip-adapter", unet, PRESETS["tiny"],
                     seed + 3, seed + 4)
