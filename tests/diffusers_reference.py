"""The plain diffusers pipelines the fleet must equal, built from the same model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

LOAD = dict(local_files_only=True, safety_checker=None, requires_safety_checker=False)


def _pipelines(xl: bool) -> dict[str, Any]:
    import diffusers

    prefix = "StableDiffusionXL" if xl else "StableDiffusion"
    return {kind: getattr(diffusers, f"{prefix}{suffix}Pipeline")
            for kind, suffix in (("txt2img", ""), ("img2img", "Img2Img"),
                                 ("inpaint", "Inpaint"), ("controlnet", "ControlNet"))}


class _Pipelines(dict):  # type: ignore[type-arg]
    def __missing__(self, xl: bool) -> dict[str, Any]:
        self[xl] = _pipelines(xl)
        return self[xl]


PIPELINES = _Pipelines()


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


# How a diffusers user switches samplers: Cls.from_config(pipe.scheduler.config, **overrides).
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                 "solver_order": 2}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                        "solver_order": 2,
                                                        "use_karras_sigmas": True}),
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),   # seeded with the request's seed
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}


def reference(models: Path, **kwargs: Any) -> np.ndarray:
    """Float image [H, W, 3] in [0, 1] of the matching diffusers pipeline."""
    return reference_images(models, **kwargs)[0]


def reference_images(models: Path, *, prompt: str, seed: int, steps: int = 20,
                     guidance_scale: float = 7.5, negative_prompt: str = "", width: int = 64,
                     height: int = 64, controlnets: list[tuple[str, PIL.Image.Image, float]] = (),
                     loras: list[tuple[str, float]] = (), image: PIL.Image.Image | None = None,
                     mask: PIL.Image.Image | None = None, strength: float | None = None,
                     model: str = "tiny-sd", scheduler: str = "", num_images: int = 1,
                     ip_adapters: list[tuple[str, PIL.Image.Image, float]] = (),
                     variant: str | None = None) -> np.ndarray:
    """Float images [num_images, H, W, 3] in [0, 1] of the matching diffusers pipeline, image
    i drawn with generator seed + i."""
    import diffusers

    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_images)]
    # No negative prompt is what a caller who gives none passes (SDXL then zeroes it).
    common: dict[str, Any] = dict(prompt=prompt, negative_prompt=negative_prompt or None,
                                  num_inference_steps=steps, guidance_scale=guidance_scale,
                                  generator=generators[0] if num_images == 1 else generators,
                                  num_images_per_prompt=num_images, output_type="np")
    folder = models / model
    xl = "XL" in json.loads((folder / "model_index.json").read_text())["_class_name"]
    kinds = PIPELINES[xl]
    # a variant's half-precision weights, computed in float32 as the fleet does on the CPU
    load = {**LOAD, "variant": variant, "torch_dtype": torch.float32} if variant else LOAD
    if controlnets:
        nets = [diffusers.ControlNetModel.from_pretrained(models / "controlnets" / name,
                                                          local_files_only=True)
                for name, _, _ in controlnets]
        pipe = kinds["controlnet"].from_pretrained(
            folder, controlnet=nets if len(nets) > 1 else nets[0], **load)
        images = [img for _, img, _ in controlnets]
        scales = [s for _, _, s in controlnets]
        common.update(image=images if len(nets) > 1 else images[0], height=height, width=width,
                      controlnet_conditioning_scale=scales if len(nets) > 1 else scales[0])
    elif mask is not None:
        pipe = kinds["inpaint"].from_pretrained(folder, **load)
        common.update(image=image, mask_image=mask, height=height, width=width,
                      strength=1.0 if strength is None else strength)
    elif image is not None:
        pipe = kinds["img2img"].from_pretrained(folder, **load)
        common.update(image=image, strength=0.8 if strength is None else strength)
    else:
        pipe = kinds["txt2img"].from_pretrained(folder, **load)
        common.update(height=height, width=width)
    pipe.set_progress_bar_config(disable=True)
    if scheduler and scheduler != "default":
        name, overrides = SCHEDULERS[scheduler]
        if name == "DPMSolverSDEScheduler":
            overrides = {**overrides, "noise_sampler_seed": seed}
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **overrides)
    if ip_adapters:
        folders = [str(models / "ip_adapters" / name) for name, _, _ in ip_adapters]
        pipe.load_ip_adapter(folders, subfolder=[""] * len(folders),
                             weight_name=["ip-adapter.safetensors"] * len(folders),
                             image_encoder_folder="image_encoder")
        pipe.set_ip_adapter_scale([s for _, _, s in ip_adapters])
        pictures = [img for _, img, _ in ip_adapters]
        common["ip_adapter_image"] = pictures if len(pictures) > 1 else pictures[0]
    if loras:
        for name, _ in loras:
            pipe.load_lora_weights(str(models / "loras" / f"{name}.safetensors"),
                                   adapter_name=name)
        pipe.set_adapters([n for n, _ in loras], [s for _, s in loras])
    with torch.no_grad():
        images: np.ndarray = pipe(**common).images
    return images
