"""One model batch of the step loop: works of one group key, one step each.

Every work's rows go through its add-ons (which may send them elsewhere), the batch's weight
patch is merged, the rows run as one forward (which the first work's add-ons may wrap), and each
work takes its rows of the output back. The model's first half runs before anyone's residuals
are read, so remote ControlNets compute beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from services.common.lora_merge import LoraPatcher
from services.denoiser.addons.base import BatchInput, Forward, Residuals, StepRows
from services.denoiser.job import DenoiseJob
from services.denoiser.request_state import ModelInfo, RequestState, prepare
from services.denoiser.unet_halves import AddedCond, DownMidOut
from services.denoiser.work import DenoiseWork


class Halves(Protocol):
    """:class:`~services.denoiser.unet_halves.UnetHalves` or its CUDA-graph version."""

    def down_mid(self, sample: torch.Tensor, timestep: torch.Tensor,
                 encoder_hidden_states: torch.Tensor,
                 added_cond: AddedCond | None = None) -> DownMidOut: ...

    def up(self, state: DownMidOut, down_residuals: list[torch.Tensor] | None = None,
           mid_residual: torch.Tensor | None = None) -> torch.Tensor: ...


class LoadedModel(Protocol):
    """A denoiser model as the step loop uses it (:class:`LoadedUnet`, or another family's,
    e.g. :class:`~services.denoiser.flux_models.LoadedFlux`)."""

    info: ModelInfo
    patcher: LoraPatcher

    def prepare(self, job: DenoiseJob) -> Any:
        """The job's sampler (:class:`~services.denoiser.work.Sampler`), its noise drawn."""
        ...

    def forward(self, batch: BatchInput) -> torch.Tensor: ...


@dataclass
class LoadedUnet:
    unet: Any
    info: ModelInfo
    patcher: LoraPatcher
    halves: Halves

    def prepare(self, job: DenoiseJob) -> RequestState:
        return prepare(job, self.info)

    def forward(self, batch: BatchInput) -> torch.Tensor:
        """Down and mid blocks, then the residuals (awaited only now), then the up blocks."""
        state = self.halves.down_mid(batch.sample, batch.timesteps, batch.embeds,
                                     batch.added_cond)
        residuals = batch.residuals()
        if residuals is None:
            return self.halves.up(state)
        down, (mid,) = residuals
        return self.halves.up(state, down, mid)


Outcome = bool | Exception   # whether the work's step completed, or why the work failed


def run_batch(model: LoadedModel, batch: Sequence[DenoiseWork]) -> list[Outcome]:
    """Runs one step of each work. A work whose step cannot start or whose residuals fail
    fails alone: its rows still run (with zero residuals) and its output is dropped."""
    outcomes: dict[int, Outcome] = {}   # by id(work)
    works: list[DenoiseWork] = []
    rows: list[StepRows] = []
    for work in batch:
        try:
            rows.append(work.begin_step())
            works.append(work)
        except Exception as exc:  # noqa: BLE001 - reported to that work alone
            outcomes[id(work)] = exc
    if not works:
        return [outcomes[id(work)] for work in batch]
    patch = works[0].weight_patch()
    model.patcher.apply(patch.patch, patch.layers)
    device, dtype = model.info.device, model.info.dtype
    sample = torch.cat([r.sample.to(device, dtype) for r in rows])

    def residuals() -> Residuals | None:
        return stack_residuals(rows, _read_residuals(works, outcomes), sample)

    inputs = BatchInput(
        sample=sample,
        timesteps=torch.cat([r.timestep.to(device, torch.float64).reshape(1).expand(r.rows)
                             for r in rows]),
        embeds=torch.cat([r.embeds.to(device, dtype) for r in rows]),
        added_cond=_stack([r.added_cond for r in rows], device, dtype),
        extra=_stack([r.extra for r in rows], device, dtype) or {},
        residuals=residuals,
        shared={k: v.to(device, dtype) for k, v in rows[0].shared.items()})
    forward: Forward = model.forward
    for addon in works[0].addons:
        forward = addon.wrap_forward(forward, works)
    noise = forward(inputs)
    offset = 0
    for work, step_rows in zip(works, rows, strict=True):
        part = noise[offset:offset + step_rows.rows]
        offset += step_rows.rows
        if id(work) not in outcomes:  # else its residuals failed
            try:
                outcomes[id(work)] = work.end_step(part)
            except Exception as exc:  # noqa: BLE001 - reported to that work alone
                outcomes[id(work)] = exc
    return [outcomes[id(work)] for work in batch]


def _read_residuals(works: list[DenoiseWork], outcomes: dict[int, Outcome]
                    ) -> list[Residuals | None]:
    """Each work's residuals for this step; a work whose residuals failed gets none."""
    found: list[Residuals | None] = []
    for work in works:
        try:
            found.append(work.residuals())
        except Exception as exc:  # noqa: BLE001 - reported to that work alone
            outcomes[id(work)] = exc
            found.append(None)
    return found


def _stack(parts: list[dict[str, torch.Tensor] | None], device: Any, dtype: torch.dtype
           ) -> dict[str, torch.Tensor] | None:
    """Per-row inputs of the batch's works, concatenated key by key (equal batch keys give
    every work the same keys)."""
    if parts[0] is None or not parts[0]:
        return None
    return {key: torch.cat([p[key] for p in parts if p is not None]).to(device, dtype)
            for key in parts[0]}


def stack_residuals(rows: list[StepRows], residuals: list[Residuals | None],
                    like: torch.Tensor) -> Residuals | None:
    """Per-work residuals as one batch on ``like``'s device; works without any add zeros."""
    template = next((r for r in residuals if r is not None), None)
    if template is None:
        return None
    firsts: list[list[torch.Tensor]] = []
    seconds: list[list[torch.Tensor]] = []
    for step_rows, res in zip(rows, residuals, strict=True):
        def zeros(like: list[torch.Tensor], count: int = step_rows.rows) -> list[torch.Tensor]:
            return [torch.zeros((count, *t.shape[1:]), dtype=t.dtype) for t in like]
        first, second = res if res is not None else (zeros(template[0]), zeros(template[1]))
        firsts.append(first)
        seconds.append(second)

    def batch(per_work: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        return [torch.cat(parts).to(like.device, like.dtype)
                for parts in zip(*per_work, strict=True)]
    return batch(firsts), batch(seconds)
