"""What the step loop runs: units of work that each take one UNet pass per step.

:class:`RequestWork` is a request this replica denoises. With CFG
parallelism its unconditional rows go to a partner replica each step, and
the step completes when the partner's noise prediction is back (the loop
serves other work meanwhile). :class:`~services.denoiser.cfg_pass.PassWork`
is the partner's side: rows another replica sends, one step at a time.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from services.common.errors import Cancelled, DeadlineExceeded
from services.denoiser.bal import LoraGate, LoraLayers
from services.denoiser.controlnet_set import ControlNetSet
from services.denoiser.job import DenoiseJob, ErrorEvent, FinalEvent, StepEvent
from services.denoiser.lora_patch import Patch
from services.denoiser.request_state import RequestState


@dataclass
class StepInput:
    """One work's rows of a UNet batch."""

    sample: torch.Tensor                              # UNet input rows
    timestep: torch.Tensor                            # 0-d
    embeds: torch.Tensor
    added_cond: dict[str, torch.Tensor] | None = None

    @property
    def rows(self) -> int:
        return int(self.sample.shape[0])


class StepWork(ABC):
    """The step loop's view of a unit of work."""

    request_id: str
    model: str
    controls: ControlNetSet
    last_batch: int = 1   # works in the UNet batch of its latest step

    @property
    @abstractmethod
    def patch(self) -> Patch: ...

    @property
    @abstractmethod
    def layers(self) -> LoraLayers: ...

    @abstractmethod
    def group_key(self) -> tuple[Any, ...]:
        """Works with equal keys may share a UNet batch."""

    @abstractmethod
    def runnable(self) -> bool:
        """Whether a step can start now. May raise: the work then fails."""

    @abstractmethod
    def begin_step(self) -> StepInput:
        """This step's rows; sends the step to the work's ControlNets (and CFG partner)."""

    @abstractmethod
    def end_step(self, noise: torch.Tensor) -> bool:
        """Takes this work's rows of the UNet output; True once the step is complete."""

    def settle(self) -> bool:
        """Completes a step left waiting by ``end_step``; True when it did."""
        return False

    @abstractmethod
    def after_step(self) -> bool:
        """Reports a completed step; True when the work is done."""

    @abstractmethod
    def expired(self, now: float) -> Exception | None:
        """Why the work must stop now (cancelled, past its deadline), or None."""

    @abstractmethod
    def finish(self, error: Exception | None) -> None:
        """Ends the work: closes its links and reports the error, if any."""


class CfgPartner(Protocol):
    """The requesting side of a CFG pass stream (see :mod:`services.denoiser.cfg_link`)."""

    def send(self, step: int, sample: torch.Tensor, timestep: torch.Tensor,
             scales: list[float], with_loras: bool) -> None: ...

    def poll(self) -> torch.Tensor | None: ...

    def close(self) -> None: ...


class RequestWork(StepWork):
    def __init__(self, state: RequestState, controls: ControlNetSet, gate: LoraGate,
                 partner: CfgPartner | None = None) -> None:
        self.state = state
        self.controls = controls
        controls.total_steps = len(state.timesteps)
        self.gate = gate
        self.partner = partner if state.job.do_cfg else None
        self.request_id = state.job.request_id
        self.model = state.job.model
        self.started = time.monotonic()
        self.batch_peak = 1
        self._parked: torch.Tensor | None = None

    @property
    def job(self) -> DenoiseJob:
        return self.state.job

    @property
    def patch(self) -> Patch:
        return self.gate.patch

    @property
    def layers(self) -> LoraLayers:
        return self.gate.layers

    def group_key(self) -> tuple[Any, ...]:
        return (self.model, self.patch, tuple(self.state.latents.shape), self.partner is None)

    def runnable(self) -> bool:
        return self._parked is None and self.gate.ready_for(self.state.index)

    def begin_step(self) -> StepInput:
        state = self.state
        step, t = state.index, state.timesteps[state.index]
        control_in, unet_in = state.model_input()
        embeds, added = state.prompt_embeds, state.added_cond
        scales = state.controlnet_scales()
        if self.partner is not None:
            self.partner.send(step, unet_in[:1], t, scales, with_loras=bool(self.patch))
            control_in, unet_in, embeds = control_in[1:], unet_in[1:], embeds[1:]
            added = {k: v[1:] for k, v in added.items()} if added else None
        self.controls.send(step, control_in, t, scales)
        return StepInput(unet_in, t, embeds, added)

    def end_step(self, noise: torch.Tensor) -> bool:
        if self.partner is None:
            self.state.advance(noise)
            return True
        self._parked = noise.clone()
        return self.settle()

    def settle(self) -> bool:
        if self._parked is None or self.partner is None:
            return False
        uncond = self.partner.poll()
        if uncond is None:
            return False
        parked, self._parked = self._parked, None
        self.state.advance(torch.cat([uncond.to(parked.device, parked.dtype), parked]))
        return True

    def after_step(self) -> bool:
        state, job = self.state, self.job
        self.batch_peak = max(self.batch_peak, self.last_batch)
        total = len(state.timesteps)
        if state.done:
            job.events.put(FinalEvent(
                latents=state.latents.clone(), steps=total,
                queue_ms=(self.started - job.submitted) * 1e3,
                run_ms=(time.monotonic() - self.started) * 1e3, batch_peak=self.batch_peak,
                lora_step=self.gate.patched_at if self.gate.full_patch else None,
                controlnet_wait_ms=self.controls.wait_s * 1e3))
            return True
        preview = None
        if job.preview_every and state.index % job.preview_every == 0:
            preview = state.latents.clone()
        job.events.put(StepEvent(state.index, total, preview))
        return False

    def expired(self, now: float) -> Exception | None:
        job = self.job
        if job.cancelled.is_set():
            return Cancelled("request cancelled", field="request_id")
        if job.deadline is not None and now > job.deadline:
            return DeadlineExceeded(
                f"deadline passed at step {self.state.index}/{len(self.state.timesteps)}")
        return None

    def finish(self, error: Exception | None) -> None:
        self.controls.close()
        if self.partner is not None:
            self.partner.close()
        if error is not None:
            self.job.events.put(ErrorEvent(error))
