"""Writes the trained stages as a models folder the fleet serves.

    OUT/shapes-sd/                 text-to-image pipeline (model_index.json, unet/, vae/, ...)
    OUT/shapes-sd-inpainting/      the same VAE and text encoder, the 9-channel UNet
    OUT/controlnets/shapes-edges/  ControlNet on edge maps
    OUT/loras/shapes-outlined.safetensors, shapes-striped.safetensors
    OUT/recipe.json                how they were made: command, seed, steps, loss curves

Every component is saved with diffusers' (or transformers') own writers, as
float16 safetensors (the fleet loads them as float32).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

BASE = "shapes-sd"
INPAINTING = "shapes-sd-inpainting"
CONTROLNET = "shapes-edges"
LORAS = {"outlined": "shapes-outlined", "striped": "shapes-striped"}
SHIPPED_DTYPE = torch.float16


def save_pipeline(path: Path, unet, vae, text_encoder, tokenizer,  # type: ignore[no-untyped-def]
                  dtype: torch.dtype = SHIPPED_DTYPE) -> None:
    from diffusers import StableDiffusionPipeline

    from training.architecture import scheduler

    pipe = StableDiffusionPipeline(
        vae=vae.to(dtype), text_encoder=text_encoder.to(dtype), tokenizer=tokenizer,
        unet=unet.to(dtype), scheduler=scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)


def _copy_lora(source: Path, target: Path, dtype: torch.dtype = SHIPPED_DTYPE) -> None:
    with safe_open(str(source), framework="pt") as f:
        tensors = {k: f.get_tensor(k).to(dtype) for k in f.keys()}
        metadata = dict(f.metadata() or {})
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target), metadata=metadata)


def export_tree(work: Path, out: Path, record: dict[str, Any]) -> Path:
    from diffusers import ControlNetModel

    from training import text_stage, unet_stage, vae_stage

    out.mkdir(parents=True, exist_ok=True)
    tokenizer, text_encoder = text_stage.load_text_encoder(work)
    vae = vae_stage.load_vae(work)
    save_pipeline(out / BASE, unet_stage.load_unet(work), vae, text_encoder, tokenizer)
    save_pipeline(out / INPAINTING, unet_stage.load_unet(work, "inpainting"), vae, text_encoder,
                  tokenizer)
    controlnet = ControlNetModel.from_pretrained(work / "controlnet" / "model",
                                                 local_files_only=True)
    controlnet.to(SHIPPED_DTYPE).save_pretrained(out / "controlnets" / CONTROLNET,
                                                 safe_serialization=True)
    for style, name in LORAS.items():
        _copy_lora(work / f"lora_{style}" / f"{style}.safetensors",
                   out / "loras" / f"{name}.safetensors")
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for lib in ("diffusers", "transformers", "peft"):
        versions[lib] = __import__(lib).__version__
    (out / "recipe.json").write_text(json.dumps({**record, "versions": versions}, indent=1))
    return out
