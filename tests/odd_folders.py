"""Model folders as users have them, beside the tiny tree: written with the library's own
``save_pretrained`` options, and copies gone wrong.

    tiny-sd-fp16        only fp16 variant weights (``*.fp16.safetensors``)
    tiny-sd-sharded     weights in shards with an index
    tiny-sd-both        pickled and safetensors weights side by side
    tiny-sd-pickled     pickled weights only (refused)
    tiny-sd-partial     a copy that lost its UNet weights (skipped)
    tiny-sd-lost-shard  a sharded copy that lost a shard (skipped)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

ODD = ("tiny-sd-fp16", "tiny-sd-sharded", "tiny-sd-both", "tiny-sd-pickled", "tiny-sd-partial",
       "tiny-sd-lost-shard")
SERVED = ("tiny-sd-fp16", "tiny-sd-sharded", "tiny-sd-both")


def write_odd_folders(root: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(root / "tiny-sd", local_files_only=True,
                                                   safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.save_pretrained(root / "tiny-sd-sharded", max_shard_size="200KB")
    pipe.save_pretrained(root / "tiny-sd-both", safe_serialization=True)
    pipe.save_pretrained(root / "tiny-sd-pickled", safe_serialization=False)
    for component in ("unet", "vae", "text_encoder"):  # tiny-sd-both: pickled copies too
        shutil.copytree(root / "tiny-sd-pickled" / component, root / "tiny-sd-both" / component,
                        dirs_exist_ok=True)
    shutil.copytree(root / "tiny-sd", root / "tiny-sd-partial")
    (root / "tiny-sd-partial" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.copytree(root / "tiny-sd-sharded", root / "tiny-sd-lost-shard")
    shard = sorted((root / "tiny-sd-lost-shard" / "unet").glob("*-of-*.safetensors"))[-1]
    shard.unlink()
    pipe.to(torch.float16).save_pretrained(root / "tiny-sd-fp16", variant="fp16")
