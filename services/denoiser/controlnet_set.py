"""The ControlNet links of one request, and when each step's residuals are sent for and read.

Exact schedule: step t's inputs go to every linked replica before anything is
awaited (the replicas compute at once, and the denoiser runs the UNet's down
and mid blocks meanwhile); step t's residuals are read before its up blocks.

Stale schedule (``stale=True``): step 0 is exact; from step 1 on, step t uses
step t-1's residuals, so the ControlNet of step t runs beside the whole UNet
step t and nobody waits for it. The last step's inputs are never sent: no
step would read their residuals.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import torch

from services.denoiser.addons.base import Residuals, add_residuals

log = logging.getLogger("dfleet.denoiser")


class StepLink(Protocol):
    """One (request, ControlNet) stream: one ``send`` answered by one ``receive``, in order."""

    def send(self, step: int, latents: torch.Tensor, timestep: torch.Tensor,
             scale: float) -> None: ...

    def receive(self) -> Residuals: ...

    def close(self) -> None: ...


class ControlNetSet:
    def __init__(self, links: list[StepLink], total_steps: int, stale: bool = False) -> None:
        self.links = links
        self.total_steps = total_steps
        self.stale = stale
        self._last: Residuals | None = None
        self._step = -1
        self.wait_s = 0.0   # time spent waiting for answers: what running beside the UNet hides

    def __bool__(self) -> bool:
        return bool(self.links)

    def _sends(self, step: int) -> bool:
        return not self.stale or step == 0 or step < self.total_steps - 1

    def _receives(self, step: int) -> bool:
        return not self.stale or step != 1

    def send(self, step: int, latents: torch.Tensor, timestep: torch.Tensor,
             scales: list[float]) -> None:
        """Starts step ``step`` on every replica (when its answer will be read)."""
        self._step = step
        if not self._sends(step):
            return
        for link, scale in zip(self.links, scales, strict=True):
            link.send(step, latents, timestep, scale)

    def residuals(self) -> Residuals | None:
        """The residuals step ``step`` adds: its own, or the previous step's when stale."""
        if not self.links:
            return None
        if self._receives(self._step):
            start = time.perf_counter()
            total: Residuals | None = None
            for link in self.links:
                total = add_residuals(total, link.receive())
            self._last = total
            self.wait_s += time.perf_counter() - start
        return self._last

    def close(self) -> None:
        for link in self.links:
            try:
                link.close()
            except Exception:  # noqa: BLE001 - closing is best effort; leases expire anyway
                log.warning("closing a ControlNet link failed", exc_info=True)
