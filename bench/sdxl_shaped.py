"""Writes the production-shaped benchmark tree: SDXL's real topology at narrow widths.

The UNet keeps SDXL's block structure (DownBlock2D then two CrossAttnDownBlock2D,
transformer depths 1 / 2 / 10, linear projections, text-time conditioning), so it
has SDXL's 70 transformer blocks and 722 LoRA-targetable Linear layers; only the
widths are narrowed (channels 32 / 64 / 128) until a step takes tens of ms on a
2-core CPU. The ControlNet is derived from it (the same depths), and LoRAs are
written as people download them for SDXL (diffusers/peft keys), at realistic
ranks and key counts: what loading, patch switching and residual counts cost
depends on the layers, not on the widths. Nothing is downloaded.

Tree (the layout ``services.common.model_store`` and the baseline read)::

    ROOT/sdxl-shaped/                 StableDiffusionXLPipeline folder
    ROOT/sdxl-shaped-inpainting/      the same with a 9-channel UNet
    ROOT/controlnets/sdxl-shaped-cn/
    ROOT/loras/sdxl-shaped-lora-NN-rR.safetensors
    ROOT/tree.json                    preset, seed, LoRA names by popularity rank

    python -m bench.sdxl_shaped ROOT [--loras 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.common.tiny_model import BOS, EOS, byte_vocab

PRESET = "sdxl-shaped"
MODEL, CONTROLNET = "sdxl-shaped", "sdxl-shaped-cn"

# SDXL's UNet as published (the base model's unet/config.json), block structure only.
SDXL_UNET: dict[str, Any] = dict(
    in_channels=4, out_channels=4, layers_per_block=2, act_fn="silu", flip_sin_to_cos=True,
    freq_shift=0, downsample_padding=1, mid_block_scale_factor=1, norm_eps=1e-5,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
    addition_embed_type="text_time", addition_embed_type_num_heads=64,
    # real: 320/640/1280 channels, 5/10/20 heads of 64, text 2048, time ids 6 x 256 + 1280
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, sample_size=128,
)
TEXT_WIDTH = 32          # each text encoder's hidden size; the UNet sees both: 64
POOLED_WIDTH = 64        # text_encoder_2's projection
NARROW: dict[str, Any] = dict(
    block_out_channels=(32, 64, 128), attention_head_dim=(1, 2, 4),
    cross_attention_dim=2 * TEXT_WIDTH, addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + POOLED_WIDTH, norm_num_groups=8,
    sample_size=16,  # 128x128 images by default
)

# What LoRAs people download for SDXL look like: the rank, and which layers they patch.
# The rank written is the published one narrowed with the widths (a quarter, 4 to 16):
# loading costs per layer, and the layer and key counts stay those of SDXL.
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")                    # 560 layers
ALL_LINEAR = ATTENTION + ("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")  # 722 layers
LORA_KINDS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (32, ATTENTION), (16, ALL_LINEAR), (64, ATTENTION), (8, ALL_LINEAR), (128, ATTENTION),
    (32, ALL_LINEAR), (4, ATTENTION), (16, ATTENTION),
)


def narrow_rank(rank: int) -> int:
    return max(4, min(16, rank // 4))


@dataclass(frozen=True)
class LoraFile:
    name: str
    rank: int  # as published; the file holds narrow_rank(rank)
    layers: int
    keys: int
    nbytes: int


def unet_config(in_channels: int = 4) -> dict[str, Any]:
    return {**SDXL_UNET, **NARROW, "in_channels": in_channels}


def _unet(in_channels: int) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(in_channels)).eval()


def _text_encoders() -> tuple[Any, Any, Any]:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    vocab = byte_vocab()
    config = dict(hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
                  num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab),
                  max_position_embeddings=77, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                  pad_token_id=vocab[EOS])
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, bos_token=BOS,
                              eos_token=EOS, pad_token=EOS, unk_token=EOS)
    first = CLIPTextModel(CLIPTextConfig(**config, projection_dim=TEXT_WIDTH)).eval()
    second = CLIPTextModelWithProjection(
        CLIPTextConfig(**config, projection_dim=POOLED_WIDTH)).eval()
    return tokenizer, first, second


def _vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=NARROW["sample_size"] * 8,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025, force_upcast=False,
    ).eval()


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(  # SDXL base's scheduler config
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
        interpolation_type="linear", prediction_type="epsilon", use_karras_sigmas=False)


def _save_pipeline(path: Path, unet: Any, vae: Any, encoders: tuple[Any, Any, Any]) -> None:
    from diffusers import StableDiffusionXLPipeline

    tokenizer, first, second = encoders
    StableDiffusionXLPipeline(
        vae=vae, text_encoder=first, text_encoder_2=second, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
    ).save_pretrained(path, safe_serialization=True)


def _controlnet(unet: Any) -> Any:
    """from_unet zero-initialises the output convolutions, which would make it a no-op."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet)
    for conv in controlnet.controlnet_down_blocks:
        conv.reset_parameters()
    controlnet.controlnet_mid_block.reset_parameters()
    controlnet.controlnet_cond_embedding.conv_out.reset_parameters()
    return controlnet.eval()


def lora_targets(unet: Any, suffixes: tuple[str, ...]) -> dict[str, torch.nn.Linear]:
    """The UNet's Linear layers whose names end in one of ``suffixes``, by name."""
    return {name: module for name, module in unet.named_modules()
            if isinstance(module, torch.nn.Linear)
            and any(name.endswith("." + s) for s in suffixes)}


def _save_lora(path: Path, unet: Any, published_rank: int, suffixes: tuple[str, ...],
               generator: torch.Generator) -> LoraFile:
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig

    rank = narrow_rank(published_rank)
    layers: dict[str, torch.Tensor] = {}
    targets = lora_targets(unet, suffixes)
    for name, linear in targets.items():
        # small next to the weights, as a trained LoRA's delta is
        down = torch.randn(rank, linear.in_features, generator=generator) / linear.in_features
        up = torch.randn(linear.out_features, rank, generator=generator) * 0.5 / rank ** 0.5
        layers[f"{name}.lora_A.weight"] = down
        layers[f"{name}.lora_B.weight"] = up
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(suffixes))
    StableDiffusionXLPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers, weight_name=path.name, safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict())
    return LoraFile(path.stem, published_rank, len(targets), len(layers), path.stat().st_size)


def write_sdxl_shaped(root: str | Path, seed: int = 0, loras: int = 32) -> Path:
    """Writes the tree under ``root`` and returns it; LoRA names are listed in tree.json
    from the most to the least popular (rank r drawn with weight 1 / r)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    encoders, vae = _text_encoders(), _vae()
    unet = _unet(4)
    _save_pipeline(root / MODEL, unet, vae, encoders)
    _save_pipeline(root / f"{MODEL}-inpainting", _unet(9), vae, encoders)
    _controlnet(unet).save_pretrained(root / "controlnets" / CONTROLNET, safe_serialization=True)
    (root / "loras").mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(seed + 1)
    files = []
    for i in range(loras):
        rank, suffixes = LORA_KINDS[i % len(LORA_KINDS)]
        path = root / "loras" / f"{PRESET}-lora-{i:02d}-r{rank}.safetensors"
        files.append(_save_lora(path, unet, rank, suffixes, generator))
    (root / "tree.json").write_text(json.dumps({
        "generator": "bench.sdxl_shaped", "preset": PRESET, "seed": seed, "model": MODEL,
        "controlnets": [CONTROLNET], "loras": [f.name for f in files],
        "lora_files": [f.__dict__ for f in files],
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
    }, indent=1))
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to write the model tree into")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random weight")
    parser.add_argument("--loras", type=int, default=32, help="how many LoRA files to write")
    args = parser.parse_args(argv)
    write_sdxl_shaped(args.root, args.seed, args.loras)
    print(f"wrote the {PRESET} tree to {args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
