"""One worker's whole diffusers pipelines: every model of the tree, resident, run one at a time.

This is the monolithic way of serving: a request's pipeline is picked by its
workflow (txt2img, image-to-image, inpainting, each with or without ControlNets),
its LoRAs are loaded when it arrives and unloaded after, and its progress is
reported from the pipeline's step callback.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from bench.baseline_catalog import ModelCatalog
from bench.baseline_requests import Job, Output, encode_png

# (workflow, with ControlNet) -> pipeline class built from a model's components
_PIPELINES: dict[tuple[str, bool], Any] = {
    ("txt2img", False): StableDiffusionPipeline,
    ("img2img", False): StableDiffusionImg2ImgPipeline,
    ("inpaint", False): StableDiffusionInpaintPipeline,
    ("txt2img", True): StableDiffusionControlNetPipeline,
    ("img2img", True): StableDiffusionControlNetImg2ImgPipeline,
    ("inpaint", True): StableDiffusionControlNetInpaintPipeline,
}

StepCallback = Callable[[int, int, "torch.Tensor | None"], None]


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


class PipelineSet:
    """Loads every pipeline folder and ControlNet of ``catalog`` once."""

    def __init__(self, catalog: ModelCatalog) -> None:
        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        self.catalog = catalog
        self.components = {
            name: StableDiffusionPipeline.from_pretrained(
                model.path, local_files_only=True, safety_checker=None,
                requires_safety_checker=False).components
            for name, model in catalog.models.items()
        }
        self.controlnets = {name: ControlNetModel.from_pretrained(path, local_files_only=True)
                            for name, path in catalog.controlnets.items()}
        self._built: dict[tuple[str, str, tuple[str, ...]], Any] = {}

    def pipeline(self, model: str, workflow: str, controlnets: tuple[str, ...]) -> Any:
        """The pipeline object for this combination, built from resident components once."""
        key = (model, workflow, controlnets)
        if key not in self._built:
            cls = _PIPELINES[(workflow, bool(controlnets))]
            extra: dict[str, Any] = {"requires_safety_checker": False}
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
        self._load_loras(pipe, job.loras)
        lora_ms = (time.perf_counter() - started) * 1000
        try:
            images = pipe(**self._arguments(job, pipe, on_step)).images
        finally:
            if job.loras:
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
            pipe.unet.load_lora_adapter(str(self.catalog.loras[name]), prefix="unet",
                                        adapter_name=name)
        pipe.set_adapters([n for n, _ in loras], [s for _, s in loras])

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
