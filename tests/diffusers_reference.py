"""The plain diffusers pipelines the fleet must equal, built from the same model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

LOAD = dict(local_files_only=True, safety_checker=None, requires_safety_checker=False)


def sample_image(seed: int, size: int = 64) -> PIL.Image.Image:
    """A smooth random colour image (what a user would upload), seeded."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (size // 8, size // 8, 3)).astype("uint8")
    return PIL.Image.fromarray(coarse).resize((size, size), PIL.Image.BILINEAR)


def sample_mask(size: int = 64) -> PIL.Image.Image:
    """White (repaint) over the middle third of the image."""
    mask = np.zeros((size, size), dtype="uint8")
    mask[size // 3: 2 * size // 3, size // 4: 3 * size // 4] = 255
    return PIL.Image.fromarray(mask)


def reference(models: Path, *, prompt: str, seed: int, steps: int = 20,
              guidance_scale: float = 7.5, negative_prompt: str = "", width: int = 64,
              height: int = 64, controlnets: list[tuple[str, PIL.Image.Image, float]] = (),
              loras: list[tuple[str, float]] = (), image: PIL.Image.Image | None = None,
              mask: PIL.Image.Image | None = None, strength: float | None = None,
              model: str = "tiny-sd") -> np.ndarray:
    """Float image [H, W, 3] in [0, 1] of the matching diffusers pipeline."""
    import diffusers

    common: dict[str, Any] = dict(prompt=prompt, negative_prompt=negative_prompt,
                                  num_inference_steps=steps, guidance_scale=guidance_scale,
                                  generator=torch.Generator().manual_seed(seed), output_type="np")
    folder = models / model
    if controlnets:
        nets = [diffusers.ControlNetModel.from_pretrained(models / "controlnets" / name,
                                                          local_files_only=True)
                for name, _, _ in controlnets]
        pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
            folder, controlnet=nets if len(nets) > 1 else nets[0], **LOAD)
        images = [img for _, img, _ in controlnets]
        scales = [s for _, _, s in controlnets]
        common.update(image=images if len(nets) > 1 else images[0], height=height, width=width,
                      controlnet_conditioning_scale=scales if len(nets) > 1 else scales[0])
    elif mask is not None:
        pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(folder, **LOAD)
        common.update(image=image, mask_image=mask, height=height, width=width,
                      strength=1.0 if strength is None else strength)
    elif image is not None:
        pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folder, **LOAD)
        common.update(image=image, strength=0.8 if strength is None else strength)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, **LOAD)
        common.update(height=height, width=width)
    pipe.set_progress_bar_config(disable=True)
    if loras:
        for name, _ in loras:
            pipe.load_lora_weights(str(models / "loras" / f"{name}.safetensors"),
                                   adapter_name=name)
        pipe.set_adapters([n for n, _ in loras], [s for _, s in loras])
    with torch.no_grad():
        return pipe(**common).images[0]
