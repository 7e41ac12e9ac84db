"""The numbers of a run, computed from its records alone.

``throughput_rps``  successful requests per second of wall time.
``goodput_rps``     requests that met their SLO per second of wall time.
``attainment``      requests that met their SLO over requests scheduled (a failed
                    or unsent request misses its SLO).
Latency percentiles are over successful requests (numpy.percentile with its default
linear interpolation).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from loadgen.records import OK, RequestRecord


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean_s: float | None
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    max_s: float | None


@dataclass(frozen=True)
class Summary:
    requests: int
    ok: int
    slo_met: int
    wall_s: float
    throughput_rps: float
    goodput_rps: float
    attainment: float
    latency: LatencyStats
    errors: dict[str, int] = field(default_factory=dict)
    by_workflow: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def latency_stats(values: list[float]) -> LatencyStats:
    if not values:
        return LatencyStats(0, None, None, None, None, None)
    arr = np.asarray(values, dtype=float)
    p50, p95, p99 = (float(np.percentile(arr, q)) for q in (50, 95, 99))
    return LatencyStats(len(values), float(arr.mean()), p50, p95, p99, float(arr.max()))


def summarize(records: list[RequestRecord], wall_s: float) -> Summary:
    ok = [r for r in records if r.status == OK]
    met = sum(r.slo_met for r in records)
    errors = Counter(r.status for r in records if r.status != OK)
    by_workflow: dict[str, dict[str, float | int | None]] = {}
    for workflow in sorted({r.workflow for r in records}):
        mine = [r for r in records if r.workflow == workflow]
        stats = latency_stats([r.latency_s for r in mine
                               if r.status == OK and r.latency_s is not None])
        by_workflow[workflow] = {
            "requests": len(mine), "ok": stats.count, "slo_s": mine[0].slo_s,
            "attainment": sum(r.slo_met for r in mine) / len(mine),
            "p50_s": stats.p50_s, "p95_s": stats.p95_s, "p99_s": stats.p99_s,
        }
    wall = max(wall_s, 1e-9)
    return Summary(
        requests=len(records), ok=len(ok), slo_met=met, wall_s=wall_s,
        throughput_rps=len(ok) / wall, goodput_rps=met / wall,
        attainment=met / len(records) if records else 0.0,
        latency=latency_stats([r.latency_s for r in ok if r.latency_s is not None]),
        errors=dict(sorted(errors.items())), by_workflow=by_workflow,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def format_summary(summary: Summary) -> str:
    """A plain-text table: totals, then one row per workflow, then errors by code."""
    lat = summary.latency
    lines = [
        (f"requests {summary.requests}  ok {summary.ok}  wall {summary.wall_s:.1f}s  "
        f"throughput {summary.throughput_rps:.2f} req/s  goodput {summary.goodput_rps:.2f} req/s"),
        (f"latency ms  p50 {_ms(lat.p50_s)}  p95 {_ms(lat.p95_s)}  p99 {_ms(lat.p99_s)}  "
        f"max {_ms(lat.max_s)}    SLO attainment {summary.attainment:.1%}"),
        "",
        (f"{'workflow':<12}{'requests':>9}{'ok':>6}{'SLO s':>7}{'attain':>8}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"),
    ]
    for name, w in summary.by_workflow.items():
        lines.append(f"{name:<12}{w['requests']:>9}{w['ok']:>6}{w['slo_s']:>7.2f}"
                     f"{w['attainment']:>8.1%}{_ms(w['p50_s']):>8}{_ms(w['p95_s']):>8}"
                     f"{_ms(w['p99_s']):>8}")
    if summary.errors:
        lines += ["", "errors: " + ", ".join(f"{code} {n}" for code, n in summary.errors.items())]
    return "\n".join(lines)
