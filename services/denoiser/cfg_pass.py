"""The partner's side of CFG parallelism: another replica's unconditional rows, step by step.

The requesting replica sends each step's model input rows; this replica runs them in its own
step loop, batched with its other work of the same group key, with the request's add-ons built
for these rows from the same registry as the requester's (its ControlNets, its LoRAs when the
step says the requester merged them), and answers with the rows' noise prediction.
:class:`PassSampler` is the step loop's sampler for such rows
(:class:`~services.denoiser.work.Sampler`). On the requester's host the rows come
through a step ring (:func:`read_ring_steps`) and the answers go back through it.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from services.common.errors import Cancelled, InvalidArgument
from services.common.transport.ring_socket import RingClosed
from services.common.transport.ring_stream import RingStream
from services.denoiser.addons.base import StepRows
from services.denoiser.guiders import UNCOND


@dataclass(frozen=True)
class PassStep:
    step: int
    sample: torch.Tensor
    timestep: torch.Tensor
    with_loras: bool
    lease_ids: list[str]


@dataclass(frozen=True)
class PassAnswer:
    step: int
    noise: torch.Tensor
    lease_ids: list[str]    # of the step's sample, now done with


class PassSampler:
    """Thread-safe inbox of steps, outbox of answers (``None`` after the last one)."""

    def __init__(self, request_id: str, model: str, embeds: torch.Tensor,
                 added_cond: dict[str, torch.Tensor] | None, total_steps: int,
                 latent_channels: int) -> None:
        self.request_id = request_id
        self.model = model
        self.embeds = embeds
        self.added_cond = added_cond or None
        self.total_steps = total_steps
        self.latent_channels = latent_channels
        self.answered = 0
        self.latents = None   # the requester keeps the latents
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

    def with_loras(self) -> bool:
        """Whether the requester merged its LoRAs for the next step."""
        head = self._head()
        return head is not None and head.with_loras

    @property
    def step(self) -> int:
        head = self._head()
        return head.step if head is not None else self.answered

    @property
    def done(self) -> bool:
        return self.answered >= self.total_steps

    def group_key(self) -> tuple[Any, ...]:
        head = self._head()
        return (self.model, tuple(head.sample.shape[1:]) if head is not None else ())

    def ready(self) -> bool:
        return self._head() is not None

    def rows(self) -> StepRows:
        head = self._head()
        assert head is not None
        return StepRows(sample=head.sample, latents=head.sample[:, :self.latent_channels],
                        timestep=head.timestep, embeds=self.embeds, kinds=(UNCOND,),
                        added_cond=self.added_cond, step=head.step)

    def advance(self, noise: torch.Tensor) -> None:
        with self._lock:
            step = self._inbox.popleft()
        self.answers.put(PassAnswer(step.step, noise.clone(), step.lease_ids))
        self.answered += 1

    def expired(self, now: float) -> Exception | None:
        if self.cancelled.is_set():
            return Cancelled("the requesting replica ended the pass", field="request_id")
        return None

    def report_step(self, outputs: dict[str, torch.Tensor]) -> None:
        return None

    def report_final(self, batch_peak: int, metadata: dict[str, str]) -> None:
        self.answers.put(None)

    def report_error(self, error: Exception) -> None:
        self.answers.put(error)


def read_ring_steps(ring: RingStream, sampler: PassSampler, wake: Callable[[], None]) -> None:
    """The requester's steps from a step ring, until it closes its end."""
    while True:
        try:
            header, (sample,) = ring.receive()
        except RingClosed:
            return
        try:
            step, timestep = int(header["step"]), float(header["timestep"])
            with_loras = bool(header["with_loras"])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"bad ring step header {header!r}: {e}", field="step") from None
        sampler.push(PassStep(step=step, sample=sample,
                              timestep=torch.tensor(timestep, dtype=torch.float64),
                              with_loras=with_loras, lease_ids=[]))
        wake()
