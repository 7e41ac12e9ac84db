"""What the step loop runs: a sampler with its add-ons, one model pass per step.

A *sampler* owns a work's rows and what becomes of the model's output: a request this replica
denoises (:class:`~services.denoiser.request_state.RequestState`: latents, scheduler, guider)
or, for CFG parallelism, the rows a partner replica sends one step at a time
(:class:`~services.denoiser.cfg_pass.PassSampler`). :class:`DenoiseWork` runs the add-on
hooks (:mod:`services.denoiser.addons.base`) around it and knows no add-on by name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from typing import Protocol

import torch

from services.common.telemetry.tracing import current_span_context
from services.denoiser.addons.base import Addon, Residuals, StepRows, WeightPatch, add_residuals

log = logging.getLogger("dfleet.denoiser")


class Sampler(Protocol):
    @property
    def request_id(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def step(self) -> int: ...

    @property
    def done(self) -> bool: ...

    @property
    def latents(self) -> torch.Tensor | None: ...

    def group_key(self) -> tuple[Hashable, ...]:
        """Samplers with equal keys can share a model batch (model, row shape)."""
        ...

    def ready(self) -> bool:
        """Whether this step's rows are there."""
        ...

    def rows(self) -> StepRows: ...

    def advance(self, noise: torch.Tensor) -> None:
        """Completes the step with the model output of all its rows."""
        ...

    def expired(self, now: float) -> Exception | None: ...

    def report_step(self, outputs: dict[str, torch.Tensor]) -> None: ...

    def report_final(self, batch_peak: int, metadata: dict[str, str]) -> None: ...

    def report_error(self, error: Exception) -> None: ...


class DenoiseWork:
    def __init__(self, sampler: Sampler, addons: list[Addon]) -> None:
        self.sampler = sampler
        self.addons = addons
        self.request_id = sampler.request_id
        self.model = sampler.model
        self.started = time.monotonic()
        self.trace_link = current_span_context()  # its request's span, for the step batches
        self.last_batch = 1   # works in the model batch of its latest step
        self.batch_peak = 1
        self._parked: tuple[torch.Tensor, int] | None = None  # noise held at an add-on

    def group_key(self) -> tuple[Hashable, ...]:
        keys = tuple((a.name, key) for a in self.addons if (key := a.batch_key()) is not None)
        return (*self.sampler.group_key(), keys)

    def runnable(self) -> bool:
        """Whether a step can start now. May raise: the work then fails."""
        if self._parked is not None or not self.sampler.ready():
            return False
        step = self.sampler.step
        return all(addon.ready(step) for addon in self.addons)

    def weight_patch(self) -> WeightPatch:
        return next((p for a in self.addons if (p := a.weight_patch()) is not None),
                    WeightPatch())

    def begin_step(self) -> StepRows:
        """This step's rows, after every add-on has seen (and maybe sent or cut) them."""
        rows = self.sampler.rows()
        for addon in self.addons:
            rows = addon.before_model(rows)
        return rows

    def residuals(self) -> Residuals | None:
        total: Residuals | None = None
        for addon in self.addons:
            more = addon.residuals()
            if more is not None:
                total = add_residuals(total, more)
        return total

    def end_step(self, noise: torch.Tensor) -> bool:
        """Takes this work's rows of the model output; True once the step is complete."""
        return self._after_model(noise, 0)

    def settle(self) -> bool:
        """Completes a step an add-on held back; True when it did."""
        if self._parked is None:
            return False
        noise, start = self._parked
        self._parked = None
        return self._after_model(noise, start)

    def _after_model(self, noise: torch.Tensor, start: int) -> bool:
        order = self.addons[::-1]  # the reverse of before_model: the last to cut rows restores
        for index in range(start, len(order)):
            out = order[index].after_model(noise)
            if out is None:
                self._parked = (noise, index)
                return False
            noise = out
        self.sampler.advance(noise)
        return True

    def after_step(self) -> bool:
        """Reports a completed step; True when the work is done."""
        self.batch_peak = max(self.batch_peak, self.last_batch)
        sampler = self.sampler
        if sampler.done:
            metadata: dict[str, str] = {}
            for addon in self.addons:
                metadata.update(addon.metadata())
            sampler.report_final(self.batch_peak, metadata)
            return True
        outputs: dict[str, torch.Tensor] = {}
        latents = sampler.latents
        if latents is not None:
            for addon in self.addons:
                outputs.update(addon.step_outputs(latents, sampler.step))
        sampler.report_step(outputs)
        return False

    def expired(self, now: float) -> Exception | None:
        """Why the work must stop now (cancelled, past its deadline), or None."""
        return self.sampler.expired(now)

    def finish(self, error: Exception | None) -> None:
        """Ends the work: every add-on closes, then the error (if any) is reported."""
        for addon in self.addons:
            try:
                addon.close(error)
            except Exception:  # noqa: BLE001 - closing is best effort; leases expire anyway
                log.warning("closing add-on %s failed", addon.name, exc_info=True,
                            extra={"request_id": self.request_id})
        if error is not None:
            self.sampler.report_error(error)
