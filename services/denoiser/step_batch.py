"""One UNet batch of the step loop: works of one (model, patch, shape) group, one step each.

Parallel ControlNet (the default): every work sends its step to its
ControlNets first, the UNet's down and mid blocks run while they compute,
and the residuals are awaited only before the up blocks. Serial: the
residuals are awaited before the UNet starts; the result is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from services.denoiser.controlnet_set import Residuals
from services.denoiser.lora_patch import LoraPatcher
from services.denoiser.request_state import ModelInfo
from services.denoiser.unet_halves import AddedCond, DownMidOut
from services.denoiser.work import StepInput, StepWork


class Halves(Protocol):
    """:class:`~services.denoiser.unet_halves.UnetHalves` or its CUDA-graph version."""

    def down_mid(self, sample: torch.Tensor, timestep: torch.Tensor,
                 encoder_hidden_states: torch.Tensor,
                 added_cond: AddedCond | None = None) -> DownMidOut: ...

    def up(self, state: DownMidOut, down_residuals: list[torch.Tensor] | None = None,
           mid_residual: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass
class LoadedUnet:
    unet: Any
    info: ModelInfo
    patcher: LoraPatcher
    halves: Halves


Outcome = bool | Exception   # whether the work's step completed, or why the work failed


def run_batch(model: LoadedUnet, batch: list[StepWork], parallel_controlnet: bool = True
              ) -> list[Outcome]:
    """Runs one step of each work. A work whose step cannot start or whose ControlNet fails
    fails alone: its rows still run (with zero residuals) and its output is dropped."""
    outcomes: dict[int, Outcome] = {}   # by id(work)
    works: list[StepWork] = []
    inputs: list[StepInput] = []
    for work in batch:
        try:
            inputs.append(work.begin_step())
            works.append(work)
        except Exception as exc:  # noqa: BLE001 - reported to that work alone
            outcomes[id(work)] = exc
    if not works:
        return [outcomes[id(work)] for work in batch]
    residuals: list[Residuals | None] = []
    if not parallel_controlnet:
        residuals = _read_residuals(works, outcomes)
    head = works[0]
    model.patcher.apply(head.patch, head.layers if head.patch else {})
    device, dtype = model.info.device, model.info.dtype
    sample = torch.cat([i.sample.to(device, dtype) for i in inputs])
    timesteps = torch.cat([i.timestep.to(device, torch.float64).reshape(1).expand(i.rows)
                           for i in inputs])
    embeds = torch.cat([i.embeds.to(device, dtype) for i in inputs])
    state = model.halves.down_mid(sample, timesteps, embeds, _stack_added(inputs))
    if parallel_controlnet:
        residuals = _read_residuals(works, outcomes)
    down, mid = stack_residuals(inputs, residuals, sample)
    noise = model.halves.up(state, down, mid)
    offset = 0
    for work, step_input in zip(works, inputs, strict=True):
        rows = noise[offset:offset + step_input.rows]
        offset += step_input.rows
        if id(work) not in outcomes:  # else its ControlNet failed
            try:
                outcomes[id(work)] = work.end_step(rows)
            except Exception as exc:  # noqa: BLE001 - reported to that work alone
                outcomes[id(work)] = exc
    return [outcomes[id(work)] for work in batch]


def _read_residuals(works: list[StepWork], outcomes: dict[int, Outcome]
                    ) -> list[Residuals | None]:
    """Each work's residuals for this step; a work whose ControlNet failed gets none."""
    residuals: list[Residuals | None] = []
    for work in works:
        try:
            residuals.append(work.controls.residuals())
        except Exception as exc:  # noqa: BLE001 - reported to that work alone
            outcomes[id(work)] = exc
            residuals.append(None)
    return residuals


def _stack_added(inputs: list[StepInput]) -> AddedCond | None:
    if inputs[0].added_cond is None:
        return None
    return {key: torch.cat([i.added_cond[key] for i in inputs if i.added_cond is not None])
            for key in inputs[0].added_cond}


def stack_residuals(inputs: list[StepInput], residuals: list[Residuals | None],
                    like: torch.Tensor) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
    """Per-work residuals as one batch on ``like``'s device; works without ControlNet add zeros."""
    template = next((r for r in residuals if r is not None), None)
    if template is None:
        return None, None
    downs: list[list[torch.Tensor]] = []
    mids: list[torch.Tensor] = []
    for step_input, res in zip(inputs, residuals, strict=True):
        rows = step_input.rows
        if res is None:
            res = ([torch.zeros((rows, *d.shape[1:]), dtype=d.dtype) for d in template[0]],
                   torch.zeros((rows, *template[1].shape[1:]), dtype=template[1].dtype))
        downs.append(res[0])
        mids.append(res[1])
    down = [torch.cat(parts).to(like.device, like.dtype) for parts in zip(*downs, strict=True)]
    return down, torch.cat(mids).to(like.device, like.dtype)
