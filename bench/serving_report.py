"""The serving benchmark's outputs: the ratio table, the JSON document and the plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadgen.plots import plot_sweep
from loadgen.summary import Summary
from loadgen.sweep import SweepPoint, sustainable_rate


@dataclass
class SystemReport:
    """What one system did; ``error`` is set instead when it could not be run."""

    name: str
    solo_s: dict[str, float] = field(default_factory=dict)
    sweep: list[SweepPoint] = field(default_factory=list)
    fixed: Summary | None = None
    bursts: dict[float, Summary] = field(default_factory=dict)
    error: str = ""
    start_s: float = 0.0

    def max_rate(self, target: float) -> float | None:
        return sustainable_rate(self.sweep, target) if self.sweep else None

    def to_dict(self, target: float) -> dict[str, Any]:
        return {
            "error": self.error, "start_s": self.start_s, "solo_latency_s": self.solo_s,
            "max_rate_at_target": self.max_rate(target),
            "sweep": [{"rate": p.rate, "summary": p.summary.to_dict() if p.summary else None}
                      for p in self.sweep],
            "fixed_rate": self.fixed.to_dict() if self.fixed else None,
            "bursts": {f"{k:g}x": s.to_dict() for k, s in self.bursts.items()},
        }


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _ratio(fleet: float | None, base: float | None) -> str:
    if fleet is None or base is None or base == 0:
        return "n/a"
    return f"{fleet / base:.2f}x"


def ratio_rows(base: SystemReport, fleet: SystemReport, target: float,
               fixed_rate: float) -> list[tuple[str, str, str, str]]:
    """(metric, baseline, fleet, fleet / baseline) rows."""
    rows = [(f"max rate at {target:.0%} SLO attainment (req/s)",
             _cell(base.max_rate(target), ".3g"), _cell(fleet.max_rate(target), ".3g"),
             _ratio(fleet.max_rate(target), base.max_rate(target)))]
    base_p95 = base.fixed.latency.p95_s if base.fixed else None
    fleet_p95 = fleet.fixed.latency.p95_s if fleet.fixed else None
    rows.append((f"p95 latency at {fixed_rate:.3g} req/s (s)", _cell(base_p95, ".3f"),
                 _cell(fleet_p95, ".3f"), _ratio(fleet_p95, base_p95)))
    rows.append((f"SLO attainment at {fixed_rate:.3g} req/s",
                 _cell(base.fixed.attainment if base.fixed else None, ".1%"),
                 _cell(fleet.fixed.attainment if fleet.fixed else None, ".1%"),
                 _ratio(fleet.fixed.attainment if fleet.fixed else None,
                        base.fixed.attainment if base.fixed else None)))
    for factor in sorted(set(base.bursts) | set(fleet.bursts)):
        b, f = base.bursts.get(factor), fleet.bursts.get(factor)
        rows.append((f"SLO attainment, bursts of {factor:g}x",
                     _cell(b.attainment if b else None, ".1%"),
                     _cell(f.attainment if f else None, ".1%"),
                     _ratio(f.attainment if f else None, b.attainment if b else None)))
    for workflow in sorted(set(base.solo_s) | set(fleet.solo_s)):
        b_solo, f_solo = base.solo_s.get(workflow), fleet.solo_s.get(workflow)
        rows.append((f"{workflow} alone, median latency (s)", _cell(b_solo, ".3f"),
                     _cell(f_solo, ".3f"), _ratio(f_solo, b_solo)))
    return rows


def format_table(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("metric", "baseline", "fleet", "fleet/baseline")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def write_sweep_plot(reports: list[SystemReport], target: float, path: Any) -> None:
    series = {r.name: [(p.rate, p.summary.attainment) for p in r.sweep if p.summary is not None]
              for r in reports if r.sweep}
    if series:
        plot_sweep(series, target, path)
