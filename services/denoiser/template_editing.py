"""Masked edits of image templates in the step loop: record once, then compute only the mask.

A *template edit* is an inpainting request (9-channel UNet) on a registered
template image: its mask marks what to change, its prompt what to put
there. With ``activation_cache`` on, the denoiser looks up the template's
record for the edit's *recipe* (model, size, steps, guidance, seed; the
noise and the schedule must be the template's for its activations to
apply):

* found: the edit runs *cached*: every step it computes only the mask's
  region (see :mod:`services.denoiser.masked_unet`) and takes the other
  tokens' activations, and the UNet output outside the region, from the
  record. Outside the region the latents then follow the template's own
  trajectory (same noise, same outputs), which is what the record holds.
* missing: the edit runs exact, and a *recording* run of the template
  (its whole image unmasked, its own prompt, the same recipe) joins the
  batch; when it finishes the record is stored, and later edits hit.

Why a cached edit differs from the exact one: outside the region the exact
edit's activations would see this edit's prompt (cross-attention) and the
new content inside the mask (through every convolution and self-attention);
the cached ones saw the template's prompt and its original content. Inside
the region the new tokens read that stale context. SSIM and PSNR against
the exact edit measure the difference.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from services.denoiser.activation_cache import ActivationCache, CacheSettings, TemplateRecord
from services.denoiser.activation_recorder import ActivationRecorder, entry
from services.denoiser.block_planner import BlockDemand, BlockPlanner
from services.denoiser.cache_loader import CacheLoader, LoadReport, RecordRows
from services.denoiser.edit_regions import RegionPlan, latent_mask
from services.denoiser.job import DenoiseJob
from services.denoiser.masked_unet import MaskedUnet, StepInputs, supports

if TYPE_CHECKING:
    from services.denoiser.request_state import ModelInfo, RequestState

log = logging.getLogger("dfleet.denoiser.edit")

EXACT, CACHED, RECORD = "exact", "cached", "record"


@dataclass
class TemplateEdit:
    """What a job carries when it edits, or records, a template."""

    template_id: str
    activation_cache: bool = False
    record: bool = False                         # this job is the template's recording run
    prompt_embeds: torch.Tensor | None = None    # the template's own inputs, to record it
    negative_prompt_embeds: torch.Tensor | None = None
    image_moments: torch.Tensor | None = None    # VAE moments of the whole template image
    mode: str = EXACT                            # set by the editor
    key: str = ""
    cache_bytes: int = 0
    reader: TemplateRecord | None = None
    region: torch.Tensor | None = None           # latent-level mask of a cached edit
    recorded: list[dict[str, torch.Tensor]] = field(default_factory=list)
    parent: TemplateEdit | None = None           # the edit a recording run was started for


@dataclass(frozen=True)
class EditSettings:
    """How the denoiser runs template edits."""

    cache: CacheSettings = CacheSettings()
    halo: int = 1                 # latent tokens recomputed around the mask
    lookahead: int = 1            # blocks the cache loader may run ahead of the compute
    overlap: bool = True          # False: load a step's whole cache before computing it
    plan_blocks: bool = True      # False: every block sparse, whatever the costs

    def validate(self) -> None:
        self.cache.validate()
        if self.halo < 0 or self.lookahead < 1:
            raise ValueError(f"halo={self.halo} must be >= 0 and lookahead={self.lookahead} >= 1")


NAME = "template_edit"   # the add-on's name: where a job carries its TemplateEdit


def edit_of(job: DenoiseJob) -> TemplateEdit | None:
    edit: TemplateEdit | None = job.addons.get(NAME)
    return edit


def recipe_key(job: DenoiseJob) -> str:
    edit = edit_of(job)
    assert edit is not None
    return (f"{edit.template_id}|{job.model}|{job.width}x{job.height}|"
            f"{job.num_inference_steps}|{job.guidance_scale:.6g}|{job.seed}|{job.scheduler}")


@dataclass
class _ModelParts:
    masked: MaskedUnet
    recorder: ActivationRecorder
    planner: BlockPlanner


class TemplateEditor:
    def __init__(self, settings: EditSettings, cache: ActivationCache | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.cache = cache or ActivationCache(settings.cache)
        self.loader = CacheLoader(settings.lookahead, settings.overlap)
        self._parts: dict[int, _ModelParts] = {}
        self._plans: dict[tuple[str, ...], RegionPlan] = {}
        self._recording: set[str] = set()
        self._lock = threading.Lock()
        self.last_modes: list[bool] = []

    def _model(self, unet: Any) -> _ModelParts:
        parts = self._parts.get(id(unet))
        if parts is None:
            masked = MaskedUnet(unet)
            parts = _ModelParts(masked, ActivationRecorder(unet, self.settings.cache.torch_dtype),
                                BlockPlanner(len(masked.blocks)))
            self._parts[id(unet)] = parts
        return parts

    # admission (request threads)
    def admit(self, job: DenoiseJob, info: ModelInfo, unet: Any) -> list[DenoiseJob]:
        """Picks the job's mode; returns a recording job to run alongside, if one is due."""
        edit = edit_of(job)
        if edit is None:
            return []
        edit.key = recipe_key(job)
        edit.mode = EXACT
        if not self._maskable(job, info, unet):  # served exact, nothing recorded
            return []
        if edit.record:
            edit.mode = RECORD
            with self._lock:
                self._recording.add(edit.key)
            return []
        if not edit.activation_cache:
            return []
        reader = self.cache.get(edit.key)
        if reader is not None:
            assert job.mask is not None
            edit.mode, edit.reader = CACHED, reader
            edit.region = latent_mask(job.mask, info.vae_scale_factor)
            edit.cache_bytes = reader.nbytes
            return []
        with self._lock:
            if edit.key in self._recording or edit.prompt_embeds is None:
                return []
            self._recording.add(edit.key)
        return [self._recording_job(job)]

    @staticmethod
    def _maskable(job: DenoiseJob, info: ModelInfo, unet: Any) -> bool:
        levels = len(unet.config.block_out_channels)
        side = info.vae_scale_factor * 2 ** (levels - 1)
        on_cpu = str(info.device) == "cpu"  # the region plans are CPU tensors
        return (on_cpu and job.mask is not None and info.in_channels == 9
                and set(job.addons) <= {NAME, "preview"} and job.num_images == 1
                and job.strength == 1.0 and supports(unet)
                and job.width % side == 0 and job.height % side == 0)

    @staticmethod
    def _recording_job(job: DenoiseJob) -> DenoiseJob:
        edit = edit_of(job)
        assert edit is not None and job.mask is not None
        return DenoiseJob(
            request_id=f"{job.request_id}.record", model=job.model,
            prompt_embeds=edit.prompt_embeds, negative_prompt_embeds=edit.negative_prompt_embeds,
            width=job.width, height=job.height, num_inference_steps=job.num_inference_steps,
            guidance_scale=job.guidance_scale, seed=job.seed, strength=1.0,
            scheduler=job.scheduler,
            mask=torch.zeros_like(job.mask), masked_image_moments=edit.image_moments,
            addons={NAME: TemplateEdit(edit.template_id, record=True, mode=RECORD,
                                       key=edit.key, parent=edit)})

    def group_key(self, job: DenoiseJob) -> str:
        edit = edit_of(job)
        return CACHED if edit is not None and edit.mode == CACHED else ""

    def finish(self, job: DenoiseJob) -> None:
        """The job left the loop (done, failed or cancelled): drop what it held."""
        edit = edit_of(job)
        if edit is None:
            return
        if edit.mode == RECORD:
            with self._lock:
                self._recording.discard(edit.key)
        edit.reader, edit.recorded = None, []
        with self._lock:
            for key in [k for k in self._plans if job.request_id in k]:
                del self._plans[key]

    # the step loop
    @contextmanager
    def recording(self, unet: Any, works: list[tuple[RequestState, int]]) -> Iterator[None]:
        """Records the recording jobs among ``works`` ((state, first row) of a batch)."""
        rows = {s.job.request_id: slice(first, first + s.rows_count) for s, first in works
                if (e := edit_of(s.job)) is not None and e.mode == RECORD}
        if not rows:
            yield
            return
        indices = {s.job.request_id: s.index for s, _ in works}  # the step being recorded
        with self._model(unet).recorder.capture(rows) as captured:
            yield
        for state, _ in works:
            step = captured.get(state.job.request_id)
            if step:
                self._keep(state, step, indices[state.job.request_id])

    def _keep(self, state: RequestState, step: dict[str, torch.Tensor], index: int) -> None:
        """Adds recorded step ``index``; stores the record after the last."""
        edit = edit_of(state.job)
        assert edit is not None
        edit.recorded.append(step)
        if index < len(state.timesteps) - 1:
            return
        edit.cache_bytes = self.cache.put(edit.key, edit.recorded, {
            "template_id": edit.template_id, "rows": str(state.rows_count)})
        edit.recorded = []
        if edit.parent is not None:  # reported with the edit: the template is now warm
            edit.parent.cache_bytes = edit.cache_bytes
        log.info("template recorded", extra={"request_id": state.job.request_id,
                                             "template_id": edit.template_id,
                                             "cache_bytes": edit.cache_bytes})

    def _plan(self, unet: Any, states: list[RequestState]) -> RegionPlan:
        key = tuple(s.job.request_id for s in states)
        with self._lock:
            plan = self._plans.get(key)
        if plan is None:
            masks = torch.stack([edit_of(s.job).region for s in states])  # type: ignore[union-attr]
            plan = RegionPlan(masks, [s.rows_count for s in states], self.settings.halo,
                              len(unet.config.block_out_channels))
            with self._lock:
                self._plans[key] = plan
        return plan

    def sparse_step(self, unet: Any, states: list[RequestState], step: StepInputs
                    ) -> torch.Tensor:
        """The UNet output of a batch of cached edits (all rows, every token)."""
        parts = self._model(unet)
        plan = self._plan(unet, states)
        blocks = parts.masked.blocks
        requests = [RecordRows(edit_of(s.job).reader, s.index, s.rows_count)  # type: ignore[union-attr,arg-type]
                    for s in states]
        rows = sum(s.rows_count for s in states)
        demands = [BlockDemand(rows, plan.ratio(b.level) * rows,
                               _input_bytes(requests, b.inputs), b.kind == "up") for b in blocks]
        planner = parts.planner
        modes = planner.choose(demands) if self.settings.plan_blocks else [True] * len(blocks)
        self.last_modes = modes

        def report(r: LoadReport) -> None:
            planner.observe_bandwidth(r.bytes, r.seconds)
            if modes[r.block]:
                planner.observe_sparse_load(r.block, demands[r.block], r.bytes)

        load = self.loader.start(requests, plan, blocks, modes, report)
        try:
            return parts.masked.forward(step, plan, modes, load, lambda i, s: (
                planner.observe_compute(i, modes[i], demands[i], s)))
        finally:
            load.close()


def _input_bytes(requests: list[RecordRows], inputs: tuple[str, ...]) -> int:
    total = 0
    for req in requests:
        for name in inputs:
            t = req.record.get(req.step, entry(name, "x"))
            total += t.numel() * t.element_size()
    return total
