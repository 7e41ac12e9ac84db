"""A whole load test fixed in advance by one seed: when each request goes and what it asks.

Arrival times and request contents come from two independent random streams of
the seed, so the same seed at another rate sends the same sequence of requests,
only at other times (what a rate sweep wants).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from loadgen.arrivals import ArrivalSpec, arrival_times
from loadgen.trace import TraceRow
from loadgen.workload import WorkloadSpec, lora_weights

_SUBJECTS = ("a cat", "a lighthouse", "a red bicycle", "a mountain lake", "an old robot",
             "a bowl of fruit", "a city street at night", "a sailing ship")
_STYLES = ("oil painting", "photo", "watercolor", "pencil sketch", "3d render")


@dataclass(frozen=True)
class ScheduleSpec:
    arrivals: ArrivalSpec
    workload: WorkloadSpec
    seed: int = 0
    count: int | None = None  # at most this many requests
    duration: float | None = None  # no arrival after this many seconds
    trace: tuple[TraceRow, ...] = ()  # rows of a replayed trace (times go in ``arrivals``)

    def check(self) -> None:
        self.arrivals.check()
        self.workload.check()
        if self.count is not None and self.count < 1:
            raise ValueError("count must be >= 1")
        if self.duration is not None and not self.duration > 0:
            raise ValueError("duration must be > 0")
        if self.count is None and self.duration is None and self.arrivals.process != "trace":
            raise ValueError("give a count or a duration (or replay a trace)")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")


@dataclass(frozen=True)
class ScheduledRequest:
    index: int
    at: float  # seconds from the start of the run
    workflow: str
    seed: int
    prompt: str
    lora: str = ""
    controlnet: str = ""
    mask_ratio: float = 0.0
    slo_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def build_schedule(spec: ScheduleSpec) -> list[ScheduledRequest]:
    """The requests of ``spec`` in send order."""
    spec.check()
    arrival_seq, content_seq = np.random.SeedSequence(spec.seed).spawn(2)
    times = arrival_times(spec.arrivals, np.random.default_rng(arrival_seq), spec.count,
                          spec.duration)
    rng = np.random.default_rng(content_seq)
    work = spec.workload
    names, weights = work.workflow_weights()
    loras = work.loras or ("",)
    popularity = lora_weights(work.lora_popularity, len(loras))
    controlnets = work.controlnets or ("",)
    lo, hi = work.mask_ratio
    schedule = []
    for i, at in enumerate(times):
        # Every request draws the same fields, so the content stream stays aligned
        # whatever the workflows turn out to be.
        workflow = str(names[rng.choice(len(names), p=weights)])
        seed = int(rng.integers(0, 2**31))
        prompt = f"{_SUBJECTS[rng.integers(len(_SUBJECTS))]}, {_STYLES[rng.integers(len(_STYLES))]}"
        lora = str(loras[rng.choice(len(loras), p=popularity)])
        controlnet = str(controlnets[rng.integers(len(controlnets))])
        mask_ratio = float(rng.uniform(lo, hi))
        row = spec.trace[i] if i < len(spec.trace) else None
        if row is not None and row.workflow:
            workflow = row.workflow
        if row is not None and row.lora:
            lora = row.lora
        schedule.append(ScheduledRequest(
            index=i, at=round(float(at), 6), workflow=workflow, seed=seed, prompt=prompt,
            lora=lora if workflow in ("lora", "controlnet_lora") else "",
            controlnet=controlnet if workflow in ("controlnet", "controlnet_lora") else "",
            mask_ratio=round(mask_ratio, 2) if workflow == "edit" else 0.0,
            slo_s=work.slo(workflow)))
    if not schedule:
        raise ValueError("the schedule is empty: no arrival fell within the duration")
    return schedule
