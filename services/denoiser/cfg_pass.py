"""The partner's side of CFG parallelism: another replica's unconditional rows, step by step.

The requesting replica sends each step's UNet input rows; this replica runs
them in its own step loop, batched with its other work of the same (model,
patch, shape), with the request's ControlNets and (when the step says so) its
LoRAs, and answers with the rows' noise prediction.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from services.common.errors import Cancelled
from services.denoiser.bal import LoraLayers
from services.denoiser.controlnet_set import ControlNetSet
from services.denoiser.lora_patch import NO_PATCH, Patch
from services.denoiser.work import StepInput, StepWork


@dataclass(frozen=True)
class PassStep:
    step: int
    sample: torch.Tensor
    timestep: torch.Tensor
    controlnet_scales: list[float]
    with_loras: bool
    lease_ids: list[str]


@dataclass(frozen=True)
class PassAnswer:
    step: int
    noise: torch.Tensor
    lease_ids: list[str]    # of the step's sample, now done with


class PassWork(StepWork):
    """Thread-safe inbox of steps, outbox of answers; the step loop runs it."""

    def __init__(self, request_id: str, model: str, embeds: torch.Tensor,
                 controls: ControlNetSet, patch: Patch,
                 loras: Future[LoraLayers] | None, total_steps: int) -> None:
        self.request_id = request_id
        self.total_steps = total_steps
        self._answered = 0
        self.model = model
        self.embeds = embeds
        self.controls = controls
        self._patch = patch
        self._loras = loras
        self._inbox: deque[PassStep] = deque()
        self._lock = threading.Lock()
        self.answers: queue.Queue[PassAnswer | Exception | None] = queue.Queue()
        self.cancelled = threading.Event()

    def push(self, step: PassStep) -> None:
        with self._lock:
            self._inbox.append(step)

    def _head(self) -> PassStep | None:
        with self._lock:
            return self._inbox[0] if self._inbox else None

    @property
    def patch(self) -> Patch:
        head = self._head()
        return self._patch if head is not None and head.with_loras else NO_PATCH

    @property
    def layers(self) -> LoraLayers:
        return self._loras.result() if self._loras is not None and self._loras.done() else {}

    def group_key(self) -> tuple[Any, ...]:
        head = self._head()
        shape = tuple(head.sample.shape) if head is not None else ()
        return (self.model, self.patch, shape, True)

    def runnable(self) -> bool:
        head = self._head()
        if head is None:
            return False
        if head.with_loras and self._patch:
            assert self._loras is not None
            if not self._loras.done():
                return False
            self._loras.result()  # raises what loading raised
        return True

    def begin_step(self) -> StepInput:
        with self._lock:
            step = self._inbox[0]
        self.controls.send(step.step, step.sample, step.timestep, step.controlnet_scales)
        return StepInput(step.sample, step.timestep, self.embeds)

    def end_step(self, noise: torch.Tensor) -> bool:
        with self._lock:
            step = self._inbox.popleft()
        self.answers.put(PassAnswer(step.step, noise.clone(), step.lease_ids))
        self._answered += 1
        return True

    def after_step(self) -> bool:
        return self._answered >= self.total_steps

    def expired(self, now: float) -> Exception | None:
        if self.cancelled.is_set():
            return Cancelled("the requesting replica ended the pass", field="request_id")
        return None

    def finish(self, error: Exception | None) -> None:
        self.controls.close()
        self.answers.put(error)
