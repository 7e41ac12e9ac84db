"""A rate sweep: the same schedule seed at several rates, SLO attainment at each.

The sustainable rate is the highest tested rate that meets the attainment
target *together with every lower tested rate*, so one lucky point above a
failing one does not count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from loadgen.arrivals import ArrivalSpec
from loadgen.runner import RunOptions, RunResult, run_load
from loadgen.schedule import ScheduleSpec, build_schedule
from loadgen.summary import Summary, summarize


@dataclass(frozen=True)
class SweepPoint:
    rate: float
    summary: Summary | None  # None when skipped (``note`` says why)
    result: RunResult | None = None
    note: str = ""


def at_rate(arrivals: ArrivalSpec, rate: float) -> ArrivalSpec:
    """``arrivals`` at ``rate`` req/s; for a trace, ``rate`` is the replay speed-up."""
    if arrivals.process == "trace":
        return replace(arrivals, time_scale=rate)
    return replace(arrivals, rate=rate)


def sustainable_rate(points: list[SweepPoint], target: float) -> float | None:
    best = None
    for point in sorted(points, key=lambda p: p.rate):
        if point.summary is None or point.summary.attainment < target:
            break
        best = point.rate
    return best


def run_sweep(spec: ScheduleSpec, rates: list[float], options: RunOptions,
              stop_below: float | None = None, cooldown_s: float = 1.0,
              on_point: Callable[[SweepPoint], None] | None = None) -> list[SweepPoint]:
    """Runs ``rates`` in increasing order; once attainment falls under ``stop_below``
    the higher rates are skipped (they would only collapse further)."""
    points: list[SweepPoint] = []
    collapsed = False
    for i, rate in enumerate(sorted(rates)):
        if collapsed:
            point = SweepPoint(rate, None, note="attainment collapsed at a lower rate")
        else:
            if i:
                time.sleep(cooldown_s)
            rated = replace(spec, arrivals=at_rate(spec.arrivals, rate))
            result = run_load(build_schedule(rated), spec.workload,
                              replace(options, label=f"{options.label} {rate:g}/s"))
            point = SweepPoint(rate, summarize(result.records, result.wall_s), result)
            collapsed = (stop_below is not None and point.summary is not None
                         and point.summary.attainment < stop_below)
        points.append(point)
        if on_point is not None:
            on_point(point)
    return points


def format_sweep(points: list[SweepPoint], target: float) -> str:
    lines = [(f"{'rate/s':>8}{'requests':>9}{'ok':>6}{'tput/s':>8}{'p50 ms':>8}{'p95 ms':>8}"
             f"{'p99 ms':>8}{'attain':>8}")]
    for p in points:
        s = p.summary
        if s is None:
            lines.append(f"{p.rate:>8g}  skipped ({p.note})")
            continue
        lat = s.latency
        cells = [lat.p50_s, lat.p95_s, lat.p99_s]
        ms = ["-" if v is None else f"{v * 1000:.0f}" for v in cells]
        lines.append(f"{p.rate:>8g}{s.requests:>9}{s.ok:>6}{s.throughput_rps:>8.2f}"
                     f"{ms[0]:>8}{ms[1]:>8}{ms[2]:>8}{s.attainment:>8.1%}")
    best = sustainable_rate(points, target)
    lines.append(f"highest rate with >= {target:.0%} SLO attainment: "
                 + (f"{best:g} req/s" if best is not None else "none of the tested rates"))
    return "\n".join(lines)
