"""One request's denoising state, prepared and advanced exactly as the SD pipelines do.

``prepare`` is the pipelines' "before denoise" stage: timesteps (with the
image-to-image strength cut), the request's generator, initial latents, the
inpainting mask latents and the per-ControlNet keep schedule. The generator
is used in the same order as the pipelines use it, so the same seed gives the
same noise.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor

from services.common.errors import InvalidArgument
from services.common.model_store import new_scheduler
from services.denoiser.job import DenoiseJob


@dataclass(frozen=True)
class ModelInfo:
    """What preparing a request needs to know about the model it runs on."""

    scheduler_config: dict[str, Any]
    vae_scaling_factor: float
    vae_scale_factor: int
    in_channels: int
    latent_channels: int = 4
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


@dataclass
class RequestState:
    job: DenoiseJob
    generator: torch.Generator
    scheduler: Any
    timesteps: list[torch.Tensor]
    latents: torch.Tensor
    prompt_embeds: torch.Tensor                   # [rows, tokens, dim], uncond first with CFG
    mask: torch.Tensor | None = None              # [rows, 1, h, w]
    masked_image_latents: torch.Tensor | None = None
    controlnet_keep: list[list[float]] = field(default_factory=list)  # per step, per ControlNet
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    added_cond: dict[str, torch.Tensor] | None = None  # SDXL: text_embeds, time_ids per row
    index: int = 0

    @property
    def done(self) -> bool:
        return self.index >= len(self.timesteps)

    @property
    def rows(self) -> int:
        return self.prompt_embeds.shape[0]

    def model_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled latents, as the ControlNet sees them; full UNet input) for this step."""
        t = self.timesteps[self.index]
        doubled = torch.cat([self.latents] * 2) if self.job.do_cfg else self.latents
        scaled = self.scheduler.scale_model_input(doubled, t)
        if self.mask is None:
            return scaled, scaled
        assert self.masked_image_latents is not None
        return scaled, torch.cat([scaled, self.mask, self.masked_image_latents], dim=1)

    def controlnet_scales(self) -> list[float]:
        """Each ControlNet's conditioning scale at this step (0 outside its guidance range)."""
        keep = self.controlnet_keep[self.index]
        return [spec.scale * k for spec, k in zip(self.job.controlnets, keep, strict=True)]

    def advance(self, noise_pred: torch.Tensor) -> None:
        if self.job.do_cfg:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + self.job.guidance_scale * (text - uncond)
        t = self.timesteps[self.index]
        self.latents = self.scheduler.step(noise_pred, t, self.latents, **self.step_kwargs,
                                           return_dict=False)[0]
        self.index += 1


def _step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def _sample(moments: torch.Tensor, generator: torch.Generator, scaling: float) -> torch.Tensor:
    return scaling * DiagonalGaussianDistribution(moments).sample(generator=generator)


def _controlnet_keep(job: DenoiseJob, steps: int) -> list[list[float]]:
    return [[1.0 - float(i / steps < c.guidance_start or (i + 1) / steps > c.guidance_end)
             for c in job.controlnets] for i in range(steps)]


def prepare(job: DenoiseJob, info: ModelInfo) -> RequestState:
    scheduler = new_scheduler(info.scheduler_config)
    scheduler.set_timesteps(job.num_inference_steps)
    timesteps = scheduler.timesteps
    image_to_image = job.image_moments is not None or job.mask is not None
    if image_to_image:
        init = min(int(job.num_inference_steps * job.strength), job.num_inference_steps)
        t_start = max(job.num_inference_steps - init, 0)
        timesteps = timesteps[t_start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        if len(timesteps) < 1:
            raise InvalidArgument(
                f"strength={job.strength} with num_inference_steps={job.num_inference_steps} "
                "leaves no step to run", field="strength")
    generator = torch.Generator().manual_seed(job.seed)
    shape = (1, info.latent_channels, job.height // info.vae_scale_factor,
             job.width // info.vae_scale_factor)
    embeds = job.prompt_embeds
    if job.do_cfg:
        assert job.negative_prompt_embeds is not None
        embeds = torch.cat([job.negative_prompt_embeds, job.prompt_embeds])
    rows = embeds.shape[0]
    mask = masked = None
    sigma = scheduler.init_noise_sigma
    latent_timestep = timesteps[:1].repeat(1)
    if job.mask is not None:  # inpainting, 9-channel UNet
        strength_max = job.strength == 1.0
        image_latents = None
        if not strength_max:
            if job.image_moments is None:
                raise InvalidArgument("inpainting with strength < 1 needs the image",
                                      field="image")
            image_latents = _sample(job.image_moments, generator, info.vae_scaling_factor)
        noise = randn_tensor(shape, generator=generator, dtype=embeds.dtype)
        if strength_max:
            latents = noise * sigma
        else:
            latents = scheduler.add_noise(image_latents, noise, latent_timestep)
        mask = torch.nn.functional.interpolate(job.mask, size=shape[2:])
        assert job.masked_image_moments is not None
        masked = _sample(job.masked_image_moments, generator, info.vae_scaling_factor)
        mask = torch.cat([mask] * rows) if rows > 1 else mask
        masked = torch.cat([masked] * rows) if rows > 1 else masked
    elif job.image_moments is not None:  # image-to-image
        init_latents = _sample(job.image_moments, generator, info.vae_scaling_factor)
        noise = randn_tensor(init_latents.shape, generator=generator, dtype=embeds.dtype)
        latents = scheduler.add_noise(init_latents, noise, latent_timestep)
    else:
        latents = randn_tensor(shape, generator=generator, dtype=embeds.dtype) * sigma
    state = RequestState(
        job=job, generator=generator, scheduler=scheduler, timesteps=list(timesteps),
        latents=latents, prompt_embeds=embeds, mask=mask, masked_image_latents=masked,
        controlnet_keep=_controlnet_keep(job, len(timesteps)),
        step_kwargs=_step_kwargs(scheduler, generator), added_cond=_added_cond(job))
    return _to_device(state, info)


def _added_cond(job: DenoiseJob) -> dict[str, torch.Tensor] | None:
    """SDXL's added conditioning, rows in the order of the prompt embeddings."""
    if job.pooled_prompt_embeds is None:
        return None
    if job.add_time_ids is None:
        raise InvalidArgument("SDXL-shaped requests need add_time_ids", field="add_time_ids")
    text, time_ids = job.pooled_prompt_embeds, job.add_time_ids
    if job.do_cfg:
        if job.negative_pooled_prompt_embeds is None:
            raise InvalidArgument("needed when guidance_scale > 1",
                                  field="negative_pooled_prompt_embeds")
        text = torch.cat([job.negative_pooled_prompt_embeds, text])
        time_ids = torch.cat([time_ids, time_ids])
    return {"text_embeds": text, "time_ids": time_ids}


def _to_device(state: RequestState, info: ModelInfo) -> RequestState:
    """The state on the UNet's device and in its dtype (noise was drawn on the CPU).

    The timesteps stay on the CPU with the scheduler's own tables (the schedulers index
    those with them); the step batch moves each to the device for the UNet. A no-op for
    the CPU in float32: ``Tensor.to`` returns the tensor itself.
    """
    def move(t: torch.Tensor | None) -> Any:
        return None if t is None else t.to(info.device, info.dtype)
    state.latents = move(state.latents)
    state.prompt_embeds = move(state.prompt_embeds)
    state.mask = move(state.mask)
    state.masked_image_latents = move(state.masked_image_latents)
    if state.added_cond is not None:
        state.added_cond = {k: v.to(info.device, info.dtype) for k, v in state.added_cond.items()}
    return state
