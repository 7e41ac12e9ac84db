"""The denoiser's step loop: every active request advances one step per iteration.

Requests join and leave at step boundaries (continuous batching). Each
iteration groups the active requests by (model, LoRA patch, latent shape);
each group runs as one UNet batch, with its LoRA patch merged for the time of
that batch. ControlNet residuals come from the ControlNet replicas paired
with each request: the step's inputs are sent to all of them before any
answer is awaited, so several ControlNets compute at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch

from services.common.errors import Cancelled, DeadlineExceeded, FleetError
from services.denoiser.controlnet_link import ControlNetLink, Residuals
from services.denoiser.job import DenoiseJob, ErrorEvent, FinalEvent, StepEvent
from services.denoiser.lora_patch import NO_PATCH, LoraLayer, LoraPatcher, Patch
from services.denoiser.request_state import ModelInfo, RequestState, prepare

log = logging.getLogger("dfleet.denoiser")


@dataclass
class LoadedUnet:
    unet: Any
    info: ModelInfo
    patcher: LoraPatcher


@dataclass
class Active:
    """A running request: its state, its ControlNet links, its LoRA layers."""

    state: RequestState
    links: list[ControlNetLink]
    patch: Patch
    loras: dict[str, dict[str, LoraLayer]]
    started: float
    batch_peak: int = 1

    @property
    def job(self) -> DenoiseJob:
        return self.state.job


class DenoiserEngine:
    def __init__(self, load_unet: Callable[[str], LoadedUnet], max_batch_requests: int = 8) -> None:
        self.load_unet = load_unet
        self.max_batch_requests = max_batch_requests
        self._pending: list[Active] = []
        self._active: list[Active] = []
        self._lock = threading.Condition()
        self._stop = False
        self.steps_run = 0
        self.batches_run = 0
        self._thread = threading.Thread(target=self._loop, name="denoise-loop", daemon=True)
        self._thread.start()

    # called from request threads
    def submit(self, job: DenoiseJob, links: list[ControlNetLink],
               loras: dict[str, dict[str, LoraLayer]]) -> None:
        model = self.load_unet(job.model)
        state = prepare(job, model.info)
        patch: Patch = tuple(sorted((spec.name, spec.scale) for spec in job.loras))
        for name, layers in loras.items():
            model.patcher.check(name, layers)
        with self._lock:
            self._pending.append(Active(state, links, patch, loras, time.monotonic()))
            self._lock.notify()

    def load(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._active)

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._thread.join(timeout=10)

    # the loop
    def _loop(self) -> None:
        with torch.inference_mode():
            self._serve()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._active and not self._stop:
                    self._lock.wait()
                if self._stop:
                    return
                self._active.extend(self._pending)
                self._pending.clear()
            self._drop_finished_or_failed()
            for group in self._groups():
                try:
                    self._run_batch(group)
                except Exception as exc:  # noqa: BLE001 - reported to each request in the batch
                    if not isinstance(exc, FleetError):
                        log.exception("batch failed")
                    for item in group:
                        self._finish(item, ErrorEvent(exc))

    def _drop_finished_or_failed(self) -> None:
        now = time.monotonic()
        for item in list(self._active):
            job = item.job
            if job.cancelled.is_set():
                self._finish(item, ErrorEvent(Cancelled("request cancelled", field="request_id")))
            elif job.deadline is not None and now > job.deadline:
                self._finish(item, ErrorEvent(DeadlineExceeded(
                    f"deadline passed at step {item.state.index}/{len(item.state.timesteps)}")))

    def _groups(self) -> list[list[Active]]:
        groups: dict[tuple[Any, ...], list[Active]] = defaultdict(list)
        for item in self._active:
            key = (item.job.model, item.patch, tuple(item.state.latents.shape))
            groups[key].append(item)
        return [g[i:i + self.max_batch_requests] for g in groups.values()
                for i in range(0, len(g), self.max_batch_requests)]

    def _run_batch(self, batch: list[Active]) -> None:
        model = self.load_unet(batch[0].job.model)
        inputs = [item.state.model_input() for item in batch]
        residuals = self._controlnet_residuals(batch, inputs)
        model.patcher.apply(batch[0].patch, batch[0].loras if batch[0].patch else {})
        sample = torch.cat([unet_in for _, unet_in in inputs])
        timesteps = torch.cat([
            item.state.timesteps[item.state.index].to(torch.float64).reshape(1).expand(
                item.state.rows) for item in batch])
        embeds = torch.cat([item.state.prompt_embeds for item in batch])
        down, mid = _stack_residuals(batch, residuals)
        with torch.inference_mode():
            noise = model.unet(sample, timesteps, encoder_hidden_states=embeds,
                               down_block_additional_residuals=down,
                               mid_block_additional_residual=mid, return_dict=False)[0]
        self.batches_run += 1
        offset = 0
        for item in batch:
            item.batch_peak = max(item.batch_peak, len(batch))
            rows = item.state.rows
            item.state.advance(noise[offset:offset + rows])
            offset += rows
            self.steps_run += 1
            self._report_step(item)

    def _controlnet_residuals(self, batch: list[Active],
                              inputs: list[tuple[torch.Tensor, torch.Tensor]]
                              ) -> list[Residuals | None]:
        for item, (cn_in, _) in zip(batch, inputs):
            state = item.state
            keep = state.controlnet_keep[state.index]
            for link, spec, k in zip(item.links, item.job.controlnets, keep):
                link.send(state.index, cn_in, state.timesteps[state.index], spec.scale * k)
        results: list[Residuals | None] = []
        for item in batch:
            total: Residuals | None = None
            for link in item.links:
                down, mid = link.receive()
                if total is None:
                    total = (down, mid)
                else:
                    total = ([a + b for a, b in zip(total[0], down)], total[1] + mid)
            results.append(total)
        return results

    def _report_step(self, item: Active) -> None:
        state, job = item.state, item.job
        total = len(state.timesteps)
        if state.done:
            self._finish(item, FinalEvent(
                latents=state.latents.clone(), steps=total,
                queue_ms=(item.started - job.submitted) * 1e3,
                run_ms=(time.monotonic() - item.started) * 1e3, batch_peak=item.batch_peak))
            return
        preview = None
        if job.preview_every and state.index % job.preview_every == 0:
            preview = state.latents.clone()
        job.events.put(StepEvent(state.index, total, preview))

    def _finish(self, item: Active, event: FinalEvent | ErrorEvent) -> None:
        if item in self._active:
            self._active.remove(item)
        for link in item.links:
            try:
                link.close()
            except Exception:  # noqa: BLE001 - closing is best effort; leases expire anyway
                log.warning("closing a ControlNet link failed", exc_info=True)
        item.job.events.put(event)


def _stack_residuals(batch: list[Active], residuals: list[Residuals | None]
                     ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
    """Per-request residuals as one batch; requests without a ControlNet add zeros."""
    template = next((r for r in residuals if r is not None), None)
    if template is None:
        return None, None
    downs: list[list[torch.Tensor]] = []
    mids: list[torch.Tensor] = []
    for item, res in zip(batch, residuals):
        rows = item.state.rows
        if res is None:
            res = ([torch.zeros((rows, *d.shape[1:]), dtype=d.dtype) for d in template[0]],
                   torch.zeros((rows, *template[1].shape[1:]), dtype=template[1].dtype))
        downs.append(res[0])
        mids.append(res[1])
    down = [torch.cat(parts) for parts in zip(*downs)]
    return down, torch.cat(mids)
