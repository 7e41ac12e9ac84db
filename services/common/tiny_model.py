"""Writes a seeded, randomly initialised SD1.5-shaped model tree for tests and the demo.

Layout of the tree (the same one :mod:`services.common.model_store` reads):

    ROOT/tiny-sd/                 diffusers pipeline folder (model_index.json, unet/, vae/, ...)
    ROOT/tiny-sd-inpainting/      same components, 9-channel inpainting UNet
    ROOT/controlnets/tiny-cn-a/   ControlNet derived from tiny-sd's UNet, outputs re-randomised
    ROOT/controlnets/tiny-cn-b/
    ROOT/loras/tiny-lora-r4.safetensors, tiny-lora-r8.safetensors, and the other formats of
                                  :mod:`services.common.tiny_loras`
    ROOT/ip_adapters/tiny-ip-adapter/  IP-Adapter weights (the published file layout) beside
                                  its image encoder (a CLIP vision model with projection)
    ROOT/ar/tiny-ar/, ROOT/embed_adapters/  an AR image-embedding model and its adapters
                                  (:mod:`services.common.tiny_ar`)
    and the SDXL and Flux trees of :mod:`services.common.tiny_sdxl` and
    :mod:`services.common.tiny_flux`

Nothing is downloaded: the tokenizer is a byte-level CLIP vocabulary built here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass(frozen=True)
class TinyPreset:
    """Widths of one generated model; ``small`` gives a CPU step of a few tens of ms."""

    unet_channels: tuple[int, ...]
    text_hidden: int
    vae_channels: tuple[int, ...]
    sample_size: int  # latent side; image side is 8x


PRESETS = {
    "tiny": TinyPreset(unet_channels=(32, 64), text_hidden=32, vae_channels=(8, 16, 16, 16),
                       sample_size=8),
    "small": TinyPreset(unet_channels=(64, 128), text_hidden=64, vae_channels=(16, 32, 32, 32),
                        sample_size=32),
}


def _printable_bytes() -> list[int]:
    """The bytes CLIP's byte-level BPE maps to themselves; the others map above 255."""
    return (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))


def byte_vocab() -> dict[str, int]:
    """CLIP's 256 byte characters, the same with ``</w>``, then BOS and EOS: 514 tokens."""
    chars = [chr(b) for b in _printable_bytes()]
    chars += [chr(256 + i) for i, b in enumerate(sorted(set(range(256)) - set(_printable_bytes())))]
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def _tokenizer():  # type: ignore[no-untyped-def]
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=77,
                         bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)


def _text_encoder(preset: TinyPreset, vocab: dict[str, int]):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=preset.text_hidden, intermediate_size=2 * preset.text_hidden,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=len(vocab),
        max_position_embeddings=77, projection_dim=preset.text_hidden,
        bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS],
    )
    return CLIPTextModel(config).eval()


def _unet(preset: TinyPreset, in_channels: int):  # type: ignore[no-untyped-def]
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=preset.sample_size, in_channels=in_channels, out_channels=4,
        block_out_channels=preset.unet_channels, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=preset.text_hidden, attention_head_dim=8, norm_num_groups=8,
    ).eval()


def _vae(preset: TinyPreset):  # type: ignore[no-untyped-def]
    from diffusers import AutoencoderKL

    blocks = len(preset.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=preset.sample_size * 8,
        block_out_channels=preset.vae_channels, layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
    ).eval()


def _scheduler():  # type: ignore[no-untyped-def]
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                         set_alpha_to_one=False)


def _controlnet(unet):  # type: ignore[no-untyped-def]
    """from_unet zero-initialises the output convolutions, which would make it a no-op."""
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet)
    for conv in controlnet.controlnet_down_blocks:
        conv.reset_parameters()
    controlnet.controlnet_mid_block.reset_parameters()
    controlnet.controlnet_cond_embedding.conv_out.reset_parameters()
    return controlnet.eval()


def _save_pipeline(path: Path, unet, vae, text_encoder, tokenizer) -> None:  # type: ignore[no-untyped-def]
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)


def _save_lora(path: Path, unet, rank: int, targets: list[str], seed: int) -> None:  # type: ignore[no-untyped-def]
    import copy

    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    model = copy.deepcopy(unet)
    config = LoraConfig(r=rank, lora_alpha=rank * 2, init_lora_weights=False,
                        target_modules=targets)
    model.add_adapter(config)
    # peft-style keys throughout: converting would rename the linear layers' keys only and
    # leave a file of mixed styles, of which loaders then read one half.
    layers = get_peft_model_state_dict(model)
    # Scaled so the delta stays small next to the weights, as a trained LoRA's does.
    layers = {k: v * 0.5 for k, v in layers.items()}
    StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers, weight_name=path.name, safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict(),
    )


def _save_ip_adapter(folder: Path, unet, preset: TinyPreset, encoder_seed: int,  # type: ignore[no-untyped-def]
                     seed: int) -> None:
    """An IP-Adapter as it is published: ``image_proj.*`` (the image-embedding projection to
    4 tokens) and ``ip_adapter.{1,3,...}.to_{k,v}_ip.weight`` (one pair per cross-attention
    layer, in the UNet's processor order), beside its image encoder."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(encoder_seed)
    width = preset.text_hidden
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=width, intermediate_size=2 * width, projection_dim=width,
        num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)).eval()
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    torch.manual_seed(seed)
    cross, tokens = unet.config.cross_attention_dim, 4
    tensors = {"image_proj.proj.weight": torch.randn(tokens * cross, width) * 0.2,
               "image_proj.proj.bias": torch.randn(tokens * cross) * 0.1,
               "image_proj.norm.weight": 1 + torch.randn(cross) * 0.1,
               "image_proj.norm.bias": torch.randn(cross) * 0.1}
    channels = list(unet.config.block_out_channels)
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        for kind in ("k", "v"):
            tensors[f"ip_adapter.{key_id}.to_{kind}_ip.weight"] = torch.randn(hidden, cross) * 0.3
        key_id += 2
    save_file(tensors, str(folder / "ip-adapter.safetensors"))


def write_tiny_model(root: str | Path, seed: int = 0, preset: str = "tiny") -> Path:
    """Writes the whole tree under ``root`` (created if needed) and returns it."""
    p = PRESETS[preset]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = _text_encoder(p, byte_vocab())
    vae = _vae(p)
    unet = _unet(p, in_channels=4)
    inpaint_unet = _unet(p, in_channels=9)
    _save_pipeline(root / "tiny-sd", unet, vae, text_encoder, tokenizer)
    _save_pipeline(root / "tiny-sd-inpainting", inpaint_unet, vae, text_encoder, tokenizer)
    for name in ("tiny-cn-a", "tiny-cn-b"):
        _controlnet(unet).save_pretrained(root / "controlnets" / name, safe_serialization=True)
    loras = root / "loras"
    loras.mkdir(exist_ok=True)
    _save_lora(loras / "tiny-lora-r4.safetensors", unet, 4, ["to_q", "to_k", "to_v", "to_out.0"],
               seed + 1)
    _save_lora(loras / "tiny-lora-r8.safetensors", unet, 8, ["to_k", "to_v", "proj_in", "proj_out"],
               seed + 2)
    from services.common.tiny_sdxl import write_sdxl_tree

    write_sdxl_tree(root, seed + 10, vae, tokenizer, byte_vocab(), BOS, EOS)
    for i, name in enumerate(("tiny-ip-adapter", "tiny-ip-adapter-b")):
        # the same image encoder (seeded alike), each adapter its own projection and layers
        _save_ip_adapter(root / "ip_adapters" / name, unet, p, seed + 3, seed + 4 + i)
    from services.common.tiny_flux import write_flux_tree

    vocab = byte_vocab()
    write_flux_tree(root, seed + 30, tokenizer, len(vocab), vocab[BOS], vocab[EOS])
    from services.common.tiny_loras import write_tiny_loras

    write_tiny_loras(root, seed + 20)
    from services.common.tiny_ar import write_ar_tree

    write_ar_tree(root, seed + 30)
    (root / "tree.json").write_text(json.dumps({"generator": "dfleet tiny-model", "seed": seed,
                                                "preset": preset}, indent=1))
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to write the model tree into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    args = parser.parse_args(argv)
    write_tiny_model(args.root, seed=args.seed, preset=args.preset)
    print(f"wrote {args.preset} model tree to {args.root}")
    return 0
