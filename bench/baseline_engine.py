"""One worker's whole diffusers pipelines: every model of the tree, resident, run one at a time.

This is the monolithic way of serving: a request's pipeline is picked by its
model's family (SD1.5-style or SDXL) and its workflow (txt2img, image-to-image,
inpainting, each with or without ControlNets), its LoRAs are loaded with
diffusers' API when it arrives, and its progress is reported from the
pipeline's step callback. With ``lora_cache`` 0 a request's LoRAs are unloaded
after it; otherwise (the baseline's best case) up to that many stay loaded per
model, least recently used out, and a request activates only its own.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from bench.baseline_catalog import ModelCatalog
from bench.baseline_requests import Job, Output, encode_png

# (family, workflow, with ControlNet) -> pipeline class built from a model's components
_PIPELINES: dict[tuple[str, str, bool], Any] = {
    ("sd", "txt2img", False): StableDiffusionPipeline,
    ("sd", "img2img", False): StableDiffusionImg2ImgPipeline,
    ("sd", "inpaint", False): StableDiffusionInpaintPipeline,
    ("sd", "txt2img", True): StableDiffusionControlNetPipeline,
    ("sd", "img2img", True): StableDiffusionControlNetImg2ImgPipeline,
    ("sd", "inpaint", True): StableDiffusionControlNetInpaintPipeline,
    ("sdxl", "txt2img", False): StableDiffusionXLPipeline,
    ("sdxl", "img2img", False): StableDiffusionXLImg2ImgPipeline,
    ("sdxl", "inpaint", False): StableDiffusionXLInpaintPipeline,
    ("sdxl", "txt2img", True): StableDiffusionXLControlNetPipeline,
    ("sdxl", "img2img", True): StableDiffusionXLControlNetImg2ImgPipeline,
    ("sdxl", "inpaint", True): StableDiffusionXLControlNetInpaintPipeline,
}
_SD_ONLY = {"safety_checker": None, "requires_safety_checker": False}

StepCallback = Callable[[int, int, "torch.Tensor | None"], None]


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


class PipelineSet:
    """Loads every pipeline folder and ControlNet of ``catalog`` once."""

    def __init__(self, catalog: ModelCatalog, lora_cache: int = 0) -> None:
        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        self.catalog = catalog
        self.lora_cache = lora_cache
        self._loaded: OrderedDict[tuple[str, str], None] = OrderedDict()  # (model, LoRA), LRU
        self.components = {
            name: DiffusionPipeline.from_pretrained(
                model.path, local_files_only=True, variant=model.variant,
                torch_dtype=torch.float32,
                **(_SD_ONLY if model.family == "sd" else {})).components
            for name, model in catalog.models.items()
        }
        self.controlnets = {name: ControlNetModel.from_pretrained(path, local_files_only=True)
                            for name, path in catalog.controlnets.items()}
        self._built: dict[tuple[str, str, tuple[str, ...]], Any] = {}

    def pipeline(self, model: str, workflow: str, controlnets: tuple[str, ...]) -> Any:
        """The pipeline object for this combination, built from resident components once."""
        key = (model, workflow, controlnets)
        if key not in self._built:
            family = self.catalog.models[model].family
            cls = _PIPELINES[(family, workflow, bool(controlnets))]
            extra: dict[str, Any] = {"requires_safety_checker": False} if family == "sd" else {}
            if controlnets:
                nets = [self.controlnets[n] for n in controlnets]
                extra["controlnet"] = nets[0] if len(nets) == 1 else nets
            pipe = cls(**self.components[model], **extra)
            pipe.set_progress_bar_config(disable=True)
            self._built[key] = pipe
        return self._built[key]

    def run(self, job: Job, on_step: StepCallback) -> Output:
        """Runs ``job``; ``on_step`` may raise to stop it at a step boundary."""
        names = tuple(cn.name for cn in job.controlnets)
        pipe = self.pipeline(job.model, job.workflow, names)
        started = time.perf_counter()
        if self.lora_cache:
            self._activate_cached_loras(pipe, job.model, job.loras)
        else:
            self._load_loras(pipe, job.loras)
        lora_ms = (time.perf_counter() - started) * 1000
        try:
            images = pipe(**self._arguments(job, pipe, on_step)).images
        finally:
            if job.loras and not self.lora_cache:
                pipe.unload_lora_weights()
        pixels = np.ascontiguousarray(images[0], dtype=np.float32)
        run_ms = (time.perf_counter() - started) * 1000
        return Output(
            png=encode_png(pixels), pixels=pixels.tobytes() if job.return_pixels else None,
            shape=tuple(pixels.shape),  # type: ignore[arg-type]
            metadata={"model": job.model, "workflow": job.workflow, "seed": str(job.seed),
                      "steps": str(job.steps), "run_ms": f"{run_ms:.1f}",
                      "lora_load_ms": f"{lora_ms:.1f}"},
        )

    def preview(self, pipe: Any, latents: torch.Tensor) -> bytes:
        """A PNG of the current latents, decoded by the model's VAE."""
        with torch.no_grad():
            decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        image = pipe.image_processor.postprocess(decoded, output_type="np")[0]
        return encode_png(np.asarray(image))

    def _load_loras(self, pipe: Any, loras: tuple[tuple[str, float], ...]) -> None:
        if not loras:
            return
        for name, _ in loras:
            # the pipeline's loader reads the file's adapter metadata (lora_alpha); the
            # UNet's own load_lora_adapter would ignore it and scale the LoRA wrongly
            pipe.load_lora_weights(str(self.catalog.loras[name]), adapter_name=name)
        pipe.set_adapters([n for n, _ in loras], [s for _, s in loras])

    def _activate_cached_loras(self, pipe: Any, model: str,
                               loras: tuple[tuple[str, float], ...]) -> None:
        """Loads what is missing (evicting the least recently used beyond ``lora_cache``,
        never one this request uses) and activates this request's LoRAs alone."""
        for name, _ in loras:
            key = (model, name)
            if key in self._loaded:
                self._loaded.move_to_end(key)
                continue
            # the pipeline's loader reads the file's adapter metadata (lora_alpha); the
            # UNet's own load_lora_adapter would ignore it and scale the LoRA wrongly
            pipe.load_lora_weights(str(self.catalog.loras[name]), adapter_name=name)
            self._loaded[key] = None
        wanted = {(model, name) for name, _ in loras}
        mine = [key for key in self._loaded if key[0] == model]
        for key in mine[:max(0, len(mine) - max(self.lora_cache, len(wanted)))]:
            if key not in wanted:
                pipe.unet.delete_adapters([key[1]])
                del self._loaded[key]
        if loras:
            pipe.unet.enable_lora()
            pipe.unet.set_adapters([n for n, _ in loras], [s for _, s in loras])
        elif any(key[0] == model for key in self._loaded):
            pipe.unet.disable_lora()

    def _arguments(self, job: Job, pipe: Any, on_step: StepCallback) -> dict[str, Any]:
        def callback(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            on_step(i + 1, p.num_timesteps, kwargs.get("latents"))
            return kwargs

        args: dict[str, Any] = {
            "prompt": job.prompt, "negative_prompt": job.negative_prompt or None,
            "num_inference_steps": job.steps, "guidance_scale": job.guidance,
            "generator": torch.Generator().manual_seed(job.seed), "output_type": "np",
            "callback_on_step_end": callback,
        }
        if job.workflow != "img2img" or job.controlnets:
            args.update(width=job.width, height=job.height)
        if job.workflow != "txt2img":
            args.update(image=_decode(job.image or b""), strength=job.strength)
        if job.workflow == "inpaint":
            args["mask_image"] = _decode(job.mask or b"")
        if job.controlnets:
            one = len(job.controlnets) == 1
            images = [_decode(cn.image) for cn in job.controlnets]

            def per_net(values: list[Any]) -> Any:
                return values[0] if one else values

            args["control_image" if job.workflow != "txt2img" else "image"] = per_net(images)
            args["controlnet_conditioning_scale"] = per_net([cn.scale for cn in job.controlnets])
            args["control_guidance_start"] = per_net([cn.start for cn in job.controlnets])
            args["control_guidance_end"] = per_net([cn.end for cn in job.controlnets])
        return args
