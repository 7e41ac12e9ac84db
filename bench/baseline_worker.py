"""A baseline worker process: takes jobs first come first served and reports their events.

Messages to the server process are tuples ``(kind, request_id, payload)`` on one
shared queue: ``ready``, ``started`` (worker index), ``progress`` ((step, total,
preview PNG)), ``result`` (:class:`Output`), ``error`` ((status name, message,
field)). A job is stopped at its next step when its cancel flag is set or its
deadline passes.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("baseline.worker")


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    models_dir: str
    threads: int
    lora_cache: int = 0  # LoRAs kept loaded per model; 0 = loaded per request


class Stopped(Exception):
    """Raised from the step callback; ``code`` is CANCELLED or DEADLINE_EXCEEDED."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _limit_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _why_stop(cancel_flags: Any, slot: int, deadline: float | None) -> Stopped | None:
    if cancel_flags[slot]:
        return Stopped("CANCELLED", "cancelled")
    if deadline is not None and time.time() > deadline:
        return Stopped("DEADLINE_EXCEEDED", "deadline passed")
    return None


def worker_main(spec: WorkerSpec, jobs: Any, events: Any, cancel_flags: Any) -> None:
    """Entry point of a worker process (spawned): load everything, then serve until None."""
    _limit_threads(spec.threads)
    import torch

    from bench.baseline_catalog import scan_catalog
    from bench.baseline_engine import PipelineSet

    torch.set_num_threads(spec.threads)
    engine = PipelineSet(scan_catalog(spec.models_dir), spec.lora_cache)
    events.put(("ready", "", spec.index))
    while True:
        item = jobs.get()
        if item is None:
            return
        slot, job = item
        _serve(spec, engine, job, slot, events, cancel_flags)


def _serve(spec: WorkerSpec, engine: Any, job: Any, slot: int, events: Any,
           cancel_flags: Any) -> None:
    rid = job.request_id
    stop = _why_stop(cancel_flags, slot, job.deadline)
    if stop is not None:
        events.put(("error", rid, (stop.code, f"{stop} before it started", "")))
        return
    events.put(("started", rid, spec.index))
    pipe_names = tuple(cn.name for cn in job.controlnets)

    def on_step(step: int, total: int, latents: Any) -> None:
        why = _why_stop(cancel_flags, slot, job.deadline)
        if why is not None:
            raise why
        preview = b""
        if job.preview and latents is not None:
            preview = engine.preview(engine.pipeline(job.model, job.workflow, pipe_names), latents)
        events.put(("progress", rid, (step, total, preview)))

    try:
        output = engine.run(job, on_step)
    except Stopped as stopped:
        events.put(("error", rid, (stopped.code, f"{stopped} at a step boundary", "")))
    except Exception as error:  # noqa: BLE001 - a pipeline failure fails this request only
        log.error("request %s failed: %s", rid, traceback.format_exc())
        events.put(("error", rid, ("INTERNAL", f"{type(error).__name__}: {error}", "")))
    else:
        output.metadata["worker"] = str(spec.index)
        events.put(("result", rid, output))
