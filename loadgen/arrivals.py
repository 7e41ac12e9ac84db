"""Arrival processes: when each request of a schedule is sent, in seconds from the start.

``poisson``  exponential gaps at ``rate`` per second.
``gamma``    gamma gaps with mean ``1/rate`` and coefficient of variation ``cv``
             (cv > 1 is burstier than Poisson, cv < 1 more regular).
``onoff``    Poisson at ``rate`` during off periods of ``off_s`` seconds and at
             ``rate * burst_factor`` during on periods of ``on_s`` seconds; the
             run starts with an off period.
``trace``    the times of a CSV trace (see :mod:`loadgen.trace`), divided by
             ``time_scale`` (2 replays a trace twice as fast).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROCESSES = ("poisson", "gamma", "onoff", "trace")


@dataclass(frozen=True)
class ArrivalSpec:
    process: str = "poisson"
    rate: float = 1.0  # mean requests per second (the base rate for onoff)
    cv: float = 2.0  # gamma: coefficient of variation of the gaps
    burst_factor: float = 4.0  # onoff: on-period rate over the base rate
    on_s: float = 2.0  # onoff: length of a burst
    off_s: float = 8.0  # onoff: time between bursts
    trace_times: tuple[float, ...] = ()  # trace: arrival times in seconds
    time_scale: float = 1.0  # trace: replay speed-up

    def check(self) -> None:
        """Raises ValueError naming the bad field."""
        if self.process not in PROCESSES:
            raise ValueError(f"arrival process {self.process!r} is not one of {PROCESSES}")
        if self.process != "trace" and not self.rate > 0:
            raise ValueError(f"rate {self.rate} must be > 0")
        if self.process == "gamma" and not self.cv > 0:
            raise ValueError(f"cv {self.cv} must be > 0")
        if self.process == "onoff" and not (self.burst_factor > 0 and self.on_s > 0
                                            and self.off_s > 0):
            raise ValueError("burst_factor, on_s and off_s must be > 0")
        if self.process == "trace" and not self.trace_times:
            raise ValueError("a trace arrival process needs a trace with at least one row")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale {self.time_scale} must be > 0")

    def scaled(self, factor: float) -> ArrivalSpec:
        """The same process at ``factor`` times the rate (a trace replays faster)."""
        from dataclasses import replace

        if self.process == "trace":
            return replace(self, time_scale=self.time_scale * factor)
        return replace(self, rate=self.rate * factor)


def _gaps(spec: ArrivalSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    if spec.process == "gamma":
        shape = 1.0 / spec.cv**2
        return rng.gamma(shape, 1.0 / (spec.rate * shape), size=n)
    return rng.exponential(1.0 / spec.rate, size=n)


def _onoff_times(spec: ArrivalSpec, rng: np.random.Generator, count: int | None,
                 duration: float | None) -> list[float]:
    """Piecewise-constant Poisson: gaps restart at period boundaries (memoryless)."""
    times: list[float] = []
    start, on = 0.0, False
    while True:
        length = spec.on_s if on else spec.off_s
        rate = spec.rate * (spec.burst_factor if on else 1.0)
        t = start
        while True:
            t += rng.exponential(1.0 / rate)
            if t >= start + length:
                break
            if (duration is not None and t > duration) or (count is not None
                                                             and len(times) >= count):
                return times
            times.append(t)
        start, on = start + length, not on
        if duration is not None and start > duration:
            return times


def arrival_times(spec: ArrivalSpec, rng: np.random.Generator, count: int | None,
                  duration: float | None) -> list[float]:
    """At most ``count`` times, none after ``duration``; at least one bound unless a trace."""
    spec.check()
    if count is None and duration is None and spec.process != "trace":
        raise ValueError("give a count or a duration")
    if spec.process == "trace":
        times = [t / spec.time_scale for t in sorted(spec.trace_times)]
        times = [t for t in times if duration is None or t <= duration]
        return times[:count] if count is not None else times
    if spec.process == "onoff":
        return _onoff_times(spec, rng, count, duration)
    times = []
    t = 0.0
    while count is None or len(times) < count:
        for gap in _gaps(spec, rng, 256):
            t += float(gap)
            if (duration is not None and t > duration) or (count is not None
                                                             and len(times) >= count):
                return times
            times.append(t)
    return times
