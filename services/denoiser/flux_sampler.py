"""One Flux request's denoising state, prepared and advanced exactly as the Flux pipelines do.

``prepare_flux`` is the "before denoise" stage of ``FluxPipeline``, ``FluxImg2ImgPipeline``,
``FluxInpaintPipeline`` and ``FluxControlNetPipeline``: one generator per image; first the
latents add-ons draw from the request's generators (a ControlNet's VAE-encoded control image,
which the ControlNet pipeline samples before anything else), then the initial latents (noise,
or the image's latents re-noised by ``scale_noise``) packed into 2x2 patches, the flow-match
timesteps shifted by ``mu`` (from the image's token count), cut by the image-to-image
pipelines' own ``get_timesteps`` arithmetic (it rounds differently from the SD pipelines'),
and the inputs every row shares (the image tokens' and text tokens' position ids).

:class:`FluxState` is the step loop's sampler (:class:`~services.denoiser.work.Sampler`): rows
of packed latents with the T5 sequence, CLIP's pooled embedding and the distilled guidance
scale per row; the scheduler step; for inpainting, the image latents re-noised to the next
timestep pasted back outside the mask after every step. Its ``latents`` are unpacked
(``[images, C, h, w]``), which is what previews and the VAE read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift
from diffusers.utils.torch_utils import randn_tensor

from services.common import schedulers
from services.common.errors import InvalidArgument
from services.denoiser.addons.base import DrawsLatents, StepRows
from services.denoiser.guiders import NoGuidance
from services.denoiser.job import DenoiseJob
from services.denoiser.request_state import JobSampler, ModelInfo, sample_moments


@dataclass
class FluxState(JobSampler):
    job: DenoiseJob
    generators: list[torch.Generator]
    scheduler: Any
    timesteps: list[torch.Tensor]
    packed: torch.Tensor                          # [images, tokens, C * 4]
    prompt_embeds: torch.Tensor                   # T5's sequence, one row per image
    added_cond: dict[str, torch.Tensor]           # pooled_projections, guidance per row
    shared: dict[str, torch.Tensor]               # img_ids, txt_ids: the same for every row
    vae_scale_factor: int
    image_latents: torch.Tensor | None = None     # inpainting: the packed image latents,
    noise: torch.Tensor | None = None             # the packed initial noise
    mask: torch.Tensor | None = None              # and the packed mask (1 = repaint)
    drawn: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # add-on -> latents
    guider: NoGuidance = field(default_factory=NoGuidance)
    index: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def latents(self) -> torch.Tensor:
        """The latents unpacked, ``[images, C, h, w]``."""
        job = self.job
        unpacked: torch.Tensor = FluxPipeline._unpack_latents(
            self.packed, job.height, job.width, self.vae_scale_factor)
        return unpacked

    def final_latents(self) -> torch.Tensor:
        return self.latents

    @property
    def rows_count(self) -> int:
        return int(self.packed.shape[0])

    def group_key(self) -> tuple[Any, ...]:
        """Rows batch together when their shared inputs are equal: same latent grid (image
        ids) and text length (text ids)."""
        grid = (self.job.height // self.vae_scale_factor, self.job.width // self.vae_scale_factor)
        return (self.job.model, ("flux", *grid, self.packed.shape[-1],
                                 self.prompt_embeds.shape[1]))

    def ready(self) -> bool:
        return True

    def rows(self) -> StepRows:
        t = self.timesteps[self.index]
        return StepRows(sample=self.packed, latents=self.packed, timestep=t,
                        embeds=self.prompt_embeds, kinds=self.guider.kinds,
                        added_cond=self.added_cond, shared=self.shared, step=self.index)

    def advance(self, noise_pred: torch.Tensor) -> None:
        t = self.timesteps[self.index]
        latents = self.scheduler.step(noise_pred, t, self.packed, return_dict=False)[0]
        if self.mask is not None:
            assert self.image_latents is not None and self.noise is not None
            proper = self.image_latents
            if self.index < len(self.timesteps) - 1:
                following = torch.tensor([self.timesteps[self.index + 1]])
                proper = self.scheduler.scale_noise(proper, following, self.noise)
            latents = (1 - self.mask) * proper + self.mask * latents
        self.packed = latents
        self.index += 1


def _timesteps(job: DenoiseJob, scheduler: Any, image_tokens: int) -> list[torch.Tensor]:
    """As the Flux pipelines: sigmas from 1 to 1/n shifted by mu, and for image-to-image and
    inpainting their ``get_timesteps`` cut (t_start = int(n - n * strength))."""
    steps = job.num_inference_steps
    config = scheduler.config
    sigmas = (None if config.get("use_flow_sigmas", False)
              else np.linspace(1.0, 1 / steps, steps))
    mu = calculate_shift(image_tokens, config.get("base_image_seq_len", 256),
                         config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                         config.get("max_shift", 1.15))
    if sigmas is None:
        scheduler.set_timesteps(steps, mu=mu)
    else:
        scheduler.set_timesteps(sigmas=sigmas, mu=mu)
    timesteps = scheduler.timesteps
    if job.image_moments is None:
        scheduler.set_begin_index(0)
        return list(timesteps)
    t_start = int(max(steps - min(steps * job.strength, steps), 0))
    timesteps = timesteps[t_start * scheduler.order:]
    scheduler.set_begin_index(t_start * scheduler.order)
    if steps - t_start < 1:
        raise InvalidArgument(f"strength={job.strength} with num_inference_steps={steps} "
                              "leaves no step to run", field="strength")
    return list(timesteps)


def _latents_of(moments: torch.Tensor, generator: Any, info: ModelInfo) -> torch.Tensor:
    return sample_moments(moments, generator, info.vae_scaling_factor, info.vae_shift_factor)


def _draw_addon_latents(job: DenoiseJob, generator: Any, info: ModelInfo, images: int,
                        h: int, w: int) -> dict[str, list[torch.Tensor]]:
    """Latents add-ons draw before the initial noise, packed: each image's VAE moments
    repeated per image and sampled with the request's generators, in add-on order."""
    drawn: dict[str, list[torch.Tensor]] = {}
    for name, spec in job.addons.items():
        if isinstance(spec, DrawsLatents):
            drawn[name] = [
                FluxPipeline._pack_latents(
                    _latents_of(m.repeat(images, 1, 1, 1), generator, info), images,
                    info.latent_channels, h, w)
                for m in spec.latent_moments()]
    return drawn


def prepare_flux(job: DenoiseJob, info: ModelInfo) -> FluxState:
    if job.negative_prompt_embeds is not None:
        raise InvalidArgument("Flux models run without classifier-free guidance",
                              field="negative_conditioning")
    if job.pooled_prompt_embeds is None:
        raise InvalidArgument("Flux models need it", field="conditioning.pooled_prompt_embeds")
    scheduler = schedulers.build(info.scheduler_config,
                                 info.family.check_scheduler(job.scheduler), job.seed)
    generators = [torch.Generator().manual_seed(seed) for seed in job.seeds]
    generator: Any = generators[0] if len(generators) == 1 else generators
    images, channels, vsf = job.num_images, info.latent_channels, info.vae_scale_factor
    h, w = 2 * (job.height // (vsf * 2)), 2 * (job.width // (vsf * 2))
    embeds = job.prompt_embeds.repeat(images, 1, 1)
    dtype = embeds.dtype
    drawn = _draw_addon_latents(job, generator, info, images, h, w)
    timesteps = _timesteps(job, scheduler, (h // 2) * (w // 2))
    shape = (images, channels, h, w)
    image_latents = noise = mask = None
    if job.image_moments is None:
        if job.mask is not None:
            raise InvalidArgument("inpainting a Flux model needs the image", field="image")
        packed = FluxPipeline._pack_latents(randn_tensor(shape, generator=generator,
                                                         dtype=dtype), images, channels, h, w)
    else:
        # the pipelines encode the one image with the first generator, then repeat it
        image = _latents_of(job.image_moments, generators[0], info).repeat(images, 1, 1, 1)
        noise = randn_tensor(shape, generator=generator, dtype=dtype)
        latent_timestep = timesteps[0].reshape(1).repeat(images)
        packed = FluxPipeline._pack_latents(scheduler.scale_noise(image, latent_timestep, noise),
                                            images, channels, h, w)
        if job.mask is not None:
            image_latents = FluxPipeline._pack_latents(image, images, channels, h, w)
            noise = FluxPipeline._pack_latents(noise, images, channels, h, w)
            mask = _packed_mask(job, info, images, h, w)
        else:
            noise = None
    pooled = job.pooled_prompt_embeds.repeat(images, 1)
    guidance = torch.full([images], job.guidance_scale, dtype=torch.float32)
    state = FluxState(
        job=job, generators=generators, scheduler=scheduler, timesteps=timesteps,
        packed=packed, prompt_embeds=embeds,
        added_cond={"pooled_projections": pooled, "guidance": guidance},
        shared={"img_ids": FluxPipeline._prepare_latent_image_ids(images, h // 2, w // 2,
                                                                  "cpu", dtype),
                "txt_ids": torch.zeros(embeds.shape[1], 3, dtype=dtype)},
        vae_scale_factor=vsf, image_latents=image_latents, noise=noise, mask=mask,
        drawn=drawn)
    return _to_device(state, info)


def _packed_mask(job: DenoiseJob, info: ModelInfo, images: int, h: int, w: int
                 ) -> torch.Tensor:
    """The mask at the latents' size, one channel per latent channel, packed. (The pipeline
    also samples the masked image's latents, last; a 64-channel transformer never reads them
    and nothing draws after them, so they are left out.)"""
    assert job.mask is not None
    mask = torch.nn.functional.interpolate(job.mask, size=(h, w)).repeat(images, 1, 1, 1)
    return FluxPipeline._pack_latents(mask.repeat(1, info.latent_channels, 1, 1), images,
                                      info.latent_channels, h, w)


def _to_device(state: FluxState, info: ModelInfo) -> FluxState:
    """The state on the transformer's device and in its dtype (noise was drawn on the CPU);
    the timesteps stay with the scheduler's tables on the CPU."""
    def move(t: torch.Tensor | None) -> Any:
        return None if t is None else t.to(info.device, info.dtype)
    state.packed = move(state.packed)
    state.prompt_embeds = move(state.prompt_embeds)
    state.image_latents, state.noise = move(state.image_latents), move(state.noise)
    state.mask = move(state.mask)
    state.added_cond = {k: v.to(info.device) if k == "guidance" else move(v)
                        for k, v in state.added_cond.items()}
    state.shared = {k: move(v) for k, v in state.shared.items()}
    state.drawn = {k: [move(t) for t in v] for k, v in state.drawn.items()}
    return state
