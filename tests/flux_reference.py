"""The plain diffusers Flux pipelines the fleet must equal, built from the same model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch


def flux_reference_images(models: Path, *, prompt: str, seed: int, steps: int = 4,
                          guidance_scale: float = 3.5, width: int = 32, height: int = 32,
                          model: str = "tiny-flux-dev",
                          controlnets: list[tuple[str, PIL.Image.Image, float]] = (),
                          loras: list[tuple[str, float]] = (),
                          image: PIL.Image.Image | None = None,
                          mask: PIL.Image.Image | None = None, strength: float = 0.6,
                          num_images: int = 1, scheduler: str = "") -> np.ndarray:
    """Float images [num_images, H, W, 3] in [0, 1] of the matching Flux pipeline, image i
    drawn with generator seed + i."""
    import diffusers

    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_images)]
    common: dict[str, Any] = dict(prompt=prompt, num_inference_steps=steps,
                                  guidance_scale=guidance_scale, height=height, width=width,
                                  generator=generators[0] if num_images == 1 else generators,
                                  num_images_per_prompt=num_images, output_type="np")
    folder = models / model
    if controlnets:
        nets = [diffusers.FluxControlNetModel.from_pretrained(models / "controlnets" / name,
                                                              local_files_only=True)
                for name, _, _ in controlnets]
        controlnet = nets[0] if len(nets) == 1 else diffusers.FluxMultiControlNetModel(nets)
        pipe = diffusers.FluxControlNetPipeline.from_pretrained(
            folder, controlnet=controlnet, local_files_only=True)
        pictures = [img for _, img, _ in controlnets]
        scales = [s for _, _, s in controlnets]
        common.update(control_image=pictures[0] if len(nets) == 1 else pictures,
                      controlnet_conditioning_scale=scales[0] if len(nets) == 1 else scales)
    elif mask is not None:
        pipe = diffusers.FluxInpaintPipeline.from_pretrained(folder, local_files_only=True)
        common.update(image=image, mask_image=mask, strength=strength)
    elif image is not None:
        pipe = diffusers.FluxImg2ImgPipeline.from_pretrained(folder, local_files_only=True)
        common.update(image=image, strength=strength)
    else:
        pipe = diffusers.FluxPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    if scheduler:  # how a diffusers user switches samplers
        overrides = {"flow_match_euler": {},
                     "flow_match_euler_karras": {"use_karras_sigmas": True}}[scheduler]
        pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, **overrides)
    if loras:
        for name, _ in loras:
            pipe.load_lora_weights(str(models / "loras" / f"{name}.safetensors"),
                                   adapter_name=name)
        pipe.set_adapters([n for n, _ in loras], [s for _, s in loras])
    with torch.no_grad():
        images: np.ndarray = pipe(**common).images
    return images
