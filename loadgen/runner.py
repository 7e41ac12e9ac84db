"""Sends a schedule to a gateway through the public SDK and records every request.

Open loop: each request goes at its scheduled time whatever the others do; with
a concurrency cap it waits on the client for a free slot, and that wait counts
in its latency.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

import dfleet
from loadgen.depth import DepthSample, sample_depths
from loadgen.payloads import DEFAULT_SIDE, request_params
from loadgen.progress import ProgressLine
from loadgen.records import OK, RequestRecord
from loadgen.schedule import ScheduledRequest
from loadgen.workload import WorkloadSpec


class GatewayUnreachable(Exception):
    """The gateway did not answer ListModels before the run."""


@dataclass(frozen=True)
class RunOptions:
    address: str
    concurrency: int = 0  # requests in flight at most; 0 = no cap
    timeout_s: float = 60.0  # deadline of each request
    redis_url: str = ""  # sample queue depth per model node from this Redis when set
    depth_interval_s: float = 0.5
    progress: bool = True
    label: str = "loadgen"


@dataclass
class RunResult:
    records: list[RequestRecord]
    wall_s: float  # start of the run to the last request's end
    depth: list[DepthSample] = field(default_factory=list)
    workload: WorkloadSpec | None = None  # with the sizes the gateway defaulted


async def _resolve_models(client: dfleet.AsyncClient, work: WorkloadSpec) -> WorkloadSpec:
    """Fills what the gateway decides: width/height 0 become the model's default (so every
    workflow runs at one size) and an unset edit model becomes an inpainting model
    (``<model>-inpainting`` when listed, else the first one listed)."""
    try:
        models = await client.models(timeout=10.0)
    except dfleet.FleetError as error:
        raise GatewayUnreachable(
            f"no answer from the gateway at {client.address}: {error}") from None
    info = next((m for m in models if m.name == work.model), None)
    width = work.width or (info.default_width if info and info.default_width else DEFAULT_SIDE)
    height = work.height or (info.default_height if info and info.default_height else DEFAULT_SIDE)
    edit_model = work.edit_model
    if not edit_model:
        inpainting = [m.name for m in models if m.kind == "inpainting"]
        preferred = f"{work.model}-inpainting"
        edit_model = preferred if preferred in inpainting else (
            inpainting[0] if inpainting else work.model)
    return replace(work, width=width, height=height, edit_model=edit_model)


class _Counters:
    def __init__(self) -> None:
        self.sent = self.done = self.errors = 0


async def _one(client: dfleet.AsyncClient, req: ScheduledRequest, work: WorkloadSpec,
               record: RequestRecord, started: float, options: RunOptions,
               slots: asyncio.Semaphore | None, counters: _Counters) -> None:
    if slots is not None:
        await slots.acquire()
    record.send_s = time.monotonic() - started
    counters.sent += 1
    try:
        async for event in client.stream(req.prompt, timeout=options.timeout_s,
                                         **request_params(req, work)):
            record.request_id = event.request_id or record.request_id
            if isinstance(event, dfleet.Progress) and record.first_progress_s is None:
                record.first_progress_s = time.monotonic() - started
            elif isinstance(event, dfleet.Result):
                record.status = OK
    except dfleet.FleetError as error:
        record.status, record.error = error.code_name, error.message
        record.request_id = error.request_id or record.request_id
    except Exception as error:  # noqa: BLE001 - a client-side failure fails this request only
        record.status, record.error = "CLIENT_ERROR", repr(error)
    finally:
        record.finish_s = time.monotonic() - started
        if record.status != OK and not record.error:
            record.status, record.error = "INTERNAL", "the stream ended without a result"
        counters.done += 1
        counters.errors += record.status != OK
        if slots is not None:
            slots.release()


async def run_async(schedule: list[ScheduledRequest], work: WorkloadSpec,
                    options: RunOptions) -> RunResult:
    records = [RequestRecord(index=r.index, workflow=r.workflow, scheduled_s=r.at,
                             slo_s=r.slo_s, lora=r.lora, controlnet=r.controlnet,
                             mask_ratio=r.mask_ratio) for r in schedule]
    async with dfleet.AsyncClient(options.address, timeout=options.timeout_s) as client:
        work = await _resolve_models(client, work)
        slots = asyncio.Semaphore(options.concurrency) if options.concurrency > 0 else None
        counters = _Counters()
        progress = ProgressLine(len(schedule), options.progress, label=options.label)
        stop = asyncio.Event()
        started = time.monotonic()
        sampler = (asyncio.create_task(sample_depths(options.redis_url, options.depth_interval_s,
                                                     started, stop))
                   if options.redis_url else None)
        tasks = []
        for req, record in zip(schedule, records, strict=True):
            delay = req.at - (time.monotonic() - started)
            while delay > 0:
                await asyncio.sleep(min(delay, 0.25))
                progress.update(counters.sent, counters.done, counters.sent - counters.done,
                                counters.errors)
                delay = req.at - (time.monotonic() - started)
            tasks.append(asyncio.create_task(
                _one(client, req, work, record, started, options, slots, counters)))
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.25)
            progress.update(counters.sent, counters.done, counters.sent - counters.done,
                            counters.errors)
        progress.update(counters.sent, counters.done, 0, counters.errors, force=True)
        progress.close()
        wall_s = time.monotonic() - started
        stop.set()
        depth = await sampler if sampler is not None else []
    return RunResult(records=records, wall_s=wall_s, depth=depth, workload=work)


def run_load(schedule: list[ScheduledRequest], work: WorkloadSpec,
             options: RunOptions) -> RunResult:
    """Blocking wrapper of :func:`run_async`."""
    return asyncio.run(run_async(schedule, work, options))
