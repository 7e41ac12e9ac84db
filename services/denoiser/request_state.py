"""One request's denoising state, prepared and advanced exactly as the SD pipelines do.

``prepare`` is the pipelines' "before denoise" stage: the scheduler the request chose, its
timesteps (with the image-to-image strength cut), one generator per image (seed, seed + 1, ...
as a pipeline given a list of generators), initial latents and the inpainting mask latents.
The generators are used in the same order as the pipelines use them, so the same seeds give the
same noise. :class:`RequestState` is the step loop's sampler for the request
(:class:`~services.denoiser.work.Sampler`): its rows per step, and the guider and scheduler step
that turn the model output into the next latents.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor

from services.common import schedulers
from services.common.errors import Cancelled, DeadlineExceeded, InvalidArgument
from services.common.families import FAMILIES, Family
from services.denoiser.addons.base import StepRows
from services.denoiser.guiders import Guider, guider_for
from services.denoiser.job import DenoiseJob, ErrorEvent, FinalEvent, StepEvent


@dataclass(frozen=True)
class ModelInfo:
    """What preparing a request needs to know about the model it runs on."""

    scheduler_config: dict[str, Any]
    vae_scaling_factor: float
    vae_scale_factor: int
    in_channels: int
    latent_channels: int = 4
    vae_shift_factor: float | None = None   # Flux's VAEs shift latents before scaling them
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    family: Family = FAMILIES["sd15"]


class JobSampler:
    """What every sampler of a request this replica denoises does alike (the step loop reads
    it, :class:`~services.denoiser.work.Sampler`): its identity, progress, expiry and
    reports. The sampler has ``job``, ``timesteps``, ``index`` and ``started``, and says what
    its final latents are (``[images, C, h, w]``: what the VAE reads)."""

    job: DenoiseJob
    timesteps: list[torch.Tensor]
    index: int
    started: float

    def final_latents(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def request_id(self) -> str:
        return self.job.request_id

    @property
    def model(self) -> str:
        return self.job.model

    @property
    def step(self) -> int:
        return self.index

    @property
    def done(self) -> bool:
        return self.index >= len(self.timesteps)

    def expired(self, now: float) -> Exception | None:
        job = self.job
        if job.cancelled.is_set():
            return Cancelled("request cancelled", field="request_id")
        if job.deadline is not None and now > job.deadline:
            return DeadlineExceeded(f"deadline passed at step {self.index}/{len(self.timesteps)}")
        return None

    def report_step(self, outputs: dict[str, torch.Tensor]) -> None:
        self.job.events.put(StepEvent(self.index, len(self.timesteps), outputs))

    def report_final(self, batch_peak: int, metadata: dict[str, str]) -> None:
        job = self.job
        self.job.events.put(FinalEvent(
            latents=self.final_latents().clone(), steps=len(self.timesteps),
            queue_ms=(self.started - job.submitted) * 1e3,
            run_ms=(time.monotonic() - self.started) * 1e3, batch_peak=batch_peak,
            metadata=metadata))

    def report_error(self, error: Exception) -> None:
        self.job.events.put(ErrorEvent(error))


@dataclass
class RequestState(JobSampler):
    job: DenoiseJob
    generators: list[torch.Generator]
    scheduler: Any
    guider: Guider
    timesteps: list[torch.Tensor]
    latents: torch.Tensor                         # [images, C, h, w]
    prompt_embeds: torch.Tensor                   # [rows, tokens, dim], in guider row order
    mask: torch.Tensor | None = None              # [rows, 1, h, w]
    masked_image_latents: torch.Tensor | None = None
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    added_cond: dict[str, torch.Tensor] | None = None  # SDXL: text_embeds, time_ids per row
    index: int = 0
    started: float = field(default_factory=time.monotonic)
    # what other families' samplers have (services.denoiser.flux_sampler): latents add-ons
    # drew before the noise, inputs every row shares; none for a UNet
    drawn: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    shared: dict[str, torch.Tensor] = field(default_factory=dict)

    def final_latents(self) -> torch.Tensor:
        return self.latents

    @property
    def rows_count(self) -> int:
        return int(self.prompt_embeds.shape[0])

    @property
    def generator(self) -> torch.Generator | list[torch.Generator]:
        """What the pipelines pass as ``generator``: one, or a list of one per image."""
        return self.generators[0] if len(self.generators) == 1 else self.generators

    def group_key(self) -> tuple[Any, ...]:
        """(model, shape of one row of the model input): rows of any count batch together."""
        channels = self.latents.shape[1]
        if self.mask is not None and self.masked_image_latents is not None:
            channels += self.mask.shape[1] + self.masked_image_latents.shape[1]
        return (self.job.model, (channels, *self.latents.shape[2:]))

    def ready(self) -> bool:
        return True

    def rows(self) -> StepRows:
        """This step's rows: the scaled latents per guider row group, with the inpainting
        channels when the model takes them."""
        t = self.timesteps[self.index]
        groups = len(self.guider.kinds)
        model_latents = torch.cat([self.latents] * groups) if groups > 1 else self.latents
        scaled = self.scheduler.scale_model_input(model_latents, t)
        sample = scaled
        if self.mask is not None:
            assert self.masked_image_latents is not None
            sample = torch.cat([scaled, self.mask, self.masked_image_latents], dim=1)
        return StepRows(sample=sample, latents=scaled, timestep=t, embeds=self.prompt_embeds,
                        kinds=self.guider.kinds, added_cond=self.added_cond, step=self.index,
                        shared=self.shared)

    def advance(self, noise_pred: torch.Tensor) -> None:
        t = self.timesteps[self.index]
        self.latents = self.scheduler.step(self.guider.combine(noise_pred), t, self.latents,
                                           **self.step_kwargs, return_dict=False)[0]
        self.index += 1


def _step_kwargs(scheduler: Any, generator: Any) -> dict[str, Any]:
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def sample_moments(moments: torch.Tensor, generator: Any, scaling: float,
                   shift: float | None = None) -> torch.Tensor:
    """Latents drawn from VAE moments with ``generator`` (one, or one per row), as the
    pipelines' ``retrieve_latents`` then ``(x - shift) * scaling`` (``scaling * x`` without a
    shift, the SD pipelines' own order of operands)."""
    sample = DiagonalGaussianDistribution(moments).sample(generator=generator)
    return scaling * sample if shift is None else (sample - shift) * scaling


def _sample(moments: torch.Tensor, generator: torch.Generator, scaling: float) -> torch.Tensor:
    return sample_moments(moments, generator, scaling)


def _timesteps(job: DenoiseJob, scheduler: Any) -> list[torch.Tensor]:
    scheduler.set_timesteps(job.num_inference_steps)
    timesteps = scheduler.timesteps
    if job.image_moments is not None or job.mask is not None:
        init = min(int(job.num_inference_steps * job.strength), job.num_inference_steps)
        t_start = max(job.num_inference_steps - init, 0)
        timesteps = timesteps[t_start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        if len(timesteps) < 1:
            raise InvalidArgument(
                f"strength={job.strength} with num_inference_steps={job.num_inference_steps} "
                "leaves no step to run", field="strength")
    return list(timesteps)


def prepare(job: DenoiseJob, info: ModelInfo) -> RequestState:
    scheduler = schedulers.build(info.scheduler_config,
                                 info.family.check_scheduler(job.scheduler), job.seed)
    timesteps = _timesteps(job, scheduler)
    generators = [torch.Generator().manual_seed(seed) for seed in job.seeds]
    generator: Any = generators[0] if len(generators) == 1 else generators
    images = job.num_images
    guider = guider_for(job.guidance_scale)
    shape = (images, info.latent_channels, job.height // info.vae_scale_factor,
             job.width // info.vae_scale_factor)
    embeds = _rows(job, guider, job.prompt_embeds, job.negative_prompt_embeds,
                   "negative_prompt_embeds")
    dtype = embeds.dtype
    mask = masked = None
    sigma = scheduler.init_noise_sigma
    latent_timestep = timesteps[0].reshape(1).repeat(images)
    if job.mask is not None:  # inpainting, 9-channel UNet
        strength_max = job.strength == 1.0
        image_latents = None
        if not strength_max:
            if job.image_moments is None:
                raise InvalidArgument("inpainting with strength < 1 needs the image",
                                      field="image")
            # the pipelines encode the one image with the first generator, then repeat it
            image_latents = _sample(job.image_moments, generators[0], info.vae_scaling_factor)
            image_latents = image_latents.repeat(images, 1, 1, 1)
        noise = randn_tensor(shape, generator=generator, dtype=dtype)
        if strength_max:
            latents = noise * sigma
        else:
            latents = scheduler.add_noise(image_latents, noise, latent_timestep)
        mask = torch.nn.functional.interpolate(job.mask, size=shape[2:])
        assert job.masked_image_moments is not None
        masked = _sample(job.masked_image_moments, generators[0], info.vae_scaling_factor)
        rows = images * len(guider.kinds)
        mask, masked = mask.repeat(rows, 1, 1, 1), masked.repeat(rows, 1, 1, 1)
    elif job.image_moments is not None:  # image-to-image: the image once per generator
        init_latents = torch.cat([_sample(job.image_moments, g, info.vae_scaling_factor)
                                  for g in generators])
        noise = randn_tensor(init_latents.shape, generator=generator, dtype=dtype)
        latents = scheduler.add_noise(init_latents, noise, latent_timestep)
    else:
        latents = randn_tensor(shape, generator=generator, dtype=dtype) * sigma
    state = RequestState(
        job=job, generators=generators, scheduler=scheduler, guider=guider,
        timesteps=timesteps, latents=latents, prompt_embeds=embeds, mask=mask,
        masked_image_latents=masked, step_kwargs=_step_kwargs(scheduler, generator),
        added_cond=_added_cond(job, guider, info.family))
    return _to_device(state, info)


def _rows(job: DenoiseJob, guider: Guider, cond: torch.Tensor, uncond: torch.Tensor | None,
          field_name: str) -> torch.Tensor:
    """A per-prompt tensor as rows: each guider group (uncond first) once per image."""
    parts = []
    for kind in guider.kinds:
        tensor = cond if kind == "cond" else uncond
        if tensor is None:
            raise InvalidArgument("needed when guidance_scale > 1", field=field_name)
        parts.append(tensor.repeat(job.num_images, *([1] * (tensor.dim() - 1))))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _added_cond(job: DenoiseJob, guider: Guider, family: Family
                ) -> dict[str, torch.Tensor] | None:
    """The family's added conditioning (SDXL: pooled text, time ids), rows in the order of the
    prompt embeddings."""
    def of(embeds: torch.Tensor | None, pooled: torch.Tensor | None, which: str
           ) -> dict[str, torch.Tensor] | None:
        conditioning = {"prompt_embeds": embeds}
        if pooled is not None:
            conditioning["pooled_prompt_embeds"] = pooled
        try:
            added = family.added_cond(conditioning, job.width, job.height)  # type: ignore[arg-type]
        except KeyError as exc:
            raise InvalidArgument(f"{family.name} models need it",
                                  field=f"{which}.{exc.args[0]}") from exc
        if added is not None and job.add_time_ids is not None:
            added["time_ids"] = job.add_time_ids
        return added

    cond = of(job.prompt_embeds, job.pooled_prompt_embeds, "conditioning")
    if cond is None:
        return None
    uncond = (of(job.negative_prompt_embeds, job.negative_pooled_prompt_embeds,
                 "negative_conditioning") if len(guider.kinds) > 1 else cond)
    assert uncond is not None
    return {key: _rows(job, guider, cond[key], uncond[key], key) for key in cond}


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
