"""The denoiser's step loop: every runnable work advances one step per iteration.

Works join and leave at step boundaries (continuous batching). Each
iteration groups the runnable works by their group key (model, latent shape
and what their add-ons say, e.g. the LoRA patch); each group runs as one
model batch (:mod:`services.denoiser.step_batch`). A work may be unable to
step for a while: an add-on is not ready (its LoRAs still load at its BAL
bound) or holds its step back (the CFG partner's half has not come), or
(partner side) the next step's rows have not arrived. The loop serves the
other works meanwhile and sleeps only when none can step;
:meth:`DenoiserEngine.wake` ends the sleep.

All tensor work (loading a UNet, preparing a request, every round of the
loop) runs on the engine's :class:`~services.common.compute.ComputeThread`.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from services.common.compute import ComputeThread
from services.common.errors import FleetError
from services.denoiser.addons.base import Addon
from services.denoiser.job import DenoiseJob
from services.denoiser.request_state import RequestState
from services.denoiser.step_batch import LoadedModel, LoadedUnet, Outcome, run_batch
from services.denoiser.work import DenoiseWork

log = logging.getLogger("dfleet.denoiser")

IDLE_POLL_S = 0.5

__all__ = ["DenoiserEngine", "LoadedUnet"]


class DenoiserEngine:
    def __init__(self, load_unet: Callable[[str], LoadedModel], max_batch_requests: int = 8,
                 runner: Callable[[LoadedModel, list[DenoiseWork]], Sequence[Outcome]]
                 = run_batch, max_active_requests: int = 0) -> None:
        """``runner`` runs one batch (:func:`~services.denoiser.step_batch.run_batch`).

        ``max_active_requests`` (0 = no limit) bounds the submitted requests that step
        together; later ones wait until one ends, and start highest priority first, first
        come first served among equals. Works added by other paths (CFG passes, template
        recordings) are not counted and never wait.
        """
        self.compute = ComputeThread("denoise-compute")
        self._load_unet = load_unet
        self.runner = runner
        self.max_batch_requests = max_batch_requests
        self.max_active_requests = max_active_requests
        self._waiting: list[DenoiseWork] = []   # beyond max_active_requests, by _order
        self._order: dict[int, tuple[int, int]] = {}   # id() -> (-priority, arrival)
        self._arrivals = 0
        self._limited: set[int] = set()         # id() of active works that count against it
        self._pending: list[DenoiseWork] = []
        self._active: list[DenoiseWork] = []
        self._lock = threading.Condition()
        self._woken = False
        self._stop = False
        self.steps_run = 0
        self.batches_run = 0
        self._step_ms = 0.0
        self._batch_ms: dict[int, float] = {}   # works per batch -> recent step time
        self._thread = threading.Thread(target=self._serve, name="denoise-loop", daemon=True)
        self._thread.start()

    # called from request threads
    def load_unet(self, model: str) -> LoadedModel:
        """The loaded denoiser model of ``model`` (loaded on the compute thread when new)."""
        return self.compute.run(self._load_unet, model)

    def submit(self, job: DenoiseJob,
               addons: Callable[[RequestState], list[Addon]] | list[Addon] | None = None
               ) -> DenoiseWork:
        """Prepares ``job`` and queues it with its add-ons (built for the prepared state, on
        the compute thread, when ``addons`` is a callable)."""
        model = self.load_unet(job.model)
        state: RequestState = self.compute.run(model.prepare, job)
        built = self.compute.run(addons, state) if callable(addons) else list(addons or [])
        work = DenoiseWork(state, built)
        self.add(work, limited=True, priority=job.priority)
        return work

    def add(self, work: DenoiseWork, limited: bool = False, priority: int = 0) -> None:
        """Queues ``work``; a ``limited`` one counts against ``max_active_requests`` and
        waits its turn by ``priority`` (higher first), then arrival."""
        with self._lock:
            if limited and self.max_active_requests > 0:
                self._arrivals += 1
                self._order[id(work)] = (-priority, self._arrivals)
                bisect.insort(self._waiting, work, key=lambda w: self._order[id(w)])
            else:
                self._pending.append(work)
            self._woken = True
            self._lock.notify()

    def wake(self) -> None:
        """Something a waiting work needs has arrived: look again."""
        with self._lock:
            self._woken = True
            self._lock.notify()

    def step_ms(self) -> float:
        """Recent time of one step of one request alone (moving average); 0 before any."""
        return self._step_ms

    def batch_marginal(self) -> float | None:
        """Extra step time per extra work in a batch, as a fraction of one work's step: the
        least-squares fit of t(b) = t(1) * (1 + m * (b - 1)) over the batch sizes seen; None
        before a batch of two or more has run."""
        solo = self._batch_ms.get(1, 0.0)
        pairs = [(b - 1, t / solo - 1.0) for b, t in self._batch_ms.items() if b > 1 and solo]
        if not pairs:
            return None
        return max(0.0, sum(x * y for x, y in pairs) / sum(x * x for x, _ in pairs))

    def _observe_step(self, ms: float, works: int = 1) -> None:
        seen = self._batch_ms.get(works, 0.0)
        self._batch_ms[works] = ms if seen == 0 else 0.8 * seen + 0.2 * ms
        if works == 1:
            self._step_ms = self._batch_ms[1]

    def load(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._active) + len(self._waiting)

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._thread.join(timeout=10)
        self.compute.shutdown()

    # the loop
    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._woken and not self._stop:
                    self._lock.wait(IDLE_POLL_S if self._active else None)
                    if self._active:
                        break
                if self._stop:
                    return
                self._woken = False
                self._active.extend(self._pending)
                self._pending.clear()
                self._admit_waiting()
            self.compute.run(self._round)

    def _admit_waiting(self) -> None:
        """Moves waiting requests to the active set while there is room (under the lock)."""
        while self._waiting and len(self._limited) < self.max_active_requests:
            work = self._waiting.pop(0)
            del self._order[id(work)]
            self._limited.add(id(work))
            self._active.append(work)
            self._woken = True

    def _round(self) -> None:
        """Settles what can be settled, then runs one step of every runnable work."""
        with torch.inference_mode():
            self._step_all()

    def _step_all(self) -> None:
        self._drop_expired()
        self._settle()
        runnable = [work for work in list(self._active) if self._runnable(work)]
        if not runnable:
            return
        with self._lock:
            self._woken = True  # more steps to run: do not sleep before the next round
        for group in self._groups(runnable):
            for work in group:
                work.last_batch = len(group)
            try:
                started = time.perf_counter()
                completed = self.runner(self.load_unet(group[0].model), group)
            except Exception as exc:  # noqa: BLE001 - reported to each work in the batch
                for work in group:
                    self._report_failure(work, exc)
                continue
            self._observe_step((time.perf_counter() - started) * 1e3, len(group))
            self.batches_run += 1
            for work, outcome in zip(group, completed, strict=True):
                if isinstance(outcome, Exception):
                    self._report_failure(work, outcome)
                elif outcome:
                    self._after_step(work)

    def _runnable(self, work: DenoiseWork) -> bool:
        try:
            return work.runnable()
        except Exception as exc:  # noqa: BLE001 - e.g. its LoRA failed to load
            self._finish(work, exc)
            return False

    def _settle(self) -> None:
        for work in list(self._active):
            try:
                if work.settle():
                    self._after_step(work)
            except Exception as exc:  # noqa: BLE001 - e.g. the CFG partner failed
                self._finish(work, exc)

    def _after_step(self, work: DenoiseWork) -> None:
        self.steps_run += 1
        if work.after_step():
            self._finish(work, None)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        with self._lock:
            waiting = list(self._waiting)
        for work in waiting:
            error = work.expired(now)
            if error is not None:
                with self._lock:
                    self._waiting.remove(work)
                    del self._order[id(work)]
                self._finish(work, error)
        for work in list(self._active):
            error = work.expired(now)
            if error is not None:
                self._finish(work, error)

    def _groups(self, works: list[DenoiseWork]) -> list[list[DenoiseWork]]:
        groups: dict[tuple[Any, ...], list[DenoiseWork]] = defaultdict(list)
        for work in works:
            groups[work.group_key()].append(work)
        return [g[i:i + self.max_batch_requests] for g in groups.values()
                for i in range(0, len(g), self.max_batch_requests)]

    def _report_failure(self, work: DenoiseWork, error: Exception) -> None:
        if not isinstance(error, FleetError):
            log.error("step failed", exc_info=error, extra={"request_id": work.request_id})
        self._finish(work, error)

    def _finish(self, work: DenoiseWork, error: Exception | None) -> None:
        if work in self._active:
            self._active.remove(work)
            if id(work) in self._limited:
                with self._lock:
                    self._limited.discard(id(work))
                    self._admit_waiting()
        try:
            work.finish(error)
        except Exception:  # noqa: BLE001 - finishing is best effort
            log.warning("finishing %s failed", work.request_id, exc_info=True)
