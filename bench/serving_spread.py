"""Repeated serving runs of one preset: each metric's median and range, per system, and a plot.

Reads the ``serving.json`` documents that :func:`bench.serving.write_outputs` wrote, one per
repeat, so a summary can be rebuilt from the files alone.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

SYSTEMS = ("baseline", "fleet")


def metric_values(doc: dict[str, Any], system: str) -> dict[str, float | None]:
    """One run's headline figures for ``system`` (None where it did not run or reach them)."""
    data = doc["systems"].get(system) or {}
    fixed = data.get("fixed_rate")
    values: dict[str, float | None] = {
        "max rate at 90% SLO attainment (req/s)": data.get("max_rate_at_target"),
        "p95 latency at the fixed rate (s)": fixed["latency"]["p95_s"] if fixed else None,
        "SLO attainment at the fixed rate": fixed["attainment"] if fixed else None,
    }
    for factor, summary in (data.get("bursts") or {}).items():
        values[f"SLO attainment, bursts of {factor}"] = summary["attainment"]
    for workflow, seconds in (data.get("solo_latency_s") or {}).items():
        values[f"{workflow} alone, median latency (s)"] = seconds
    return values


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.3g} [{low:.3g}-{high:.3g}]" if len(values) > 1 else f"{mid:.3g}"


def spread_rows(docs: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(metric, baseline, fleet, fleet/baseline) with ``median [min-max]`` over the runs;
    the ratio is the median of the per-run ratios (both systems ran each run's trace)."""
    per_run = [{s: metric_values(doc, s) for s in SYSTEMS} for doc in docs]
    names = list(dict.fromkeys(name for run in per_run for s in SYSTEMS for name in run[s]))
    rows = []
    for name in names:
        cells = [[v for run in per_run if (v := run[s].get(name)) is not None] for s in SYSTEMS]
        ratios = [f / b for run in per_run
                  if (b := run["baseline"].get(name)) and (f := run["fleet"].get(name)) is not None]
        rows.append((name, _cell(cells[0]), _cell(cells[1]), _cell(ratios)))
    return rows


def write_spread_plot(docs: list[dict[str, Any]], path: Path) -> None:
    """Each run's max rate at the target, per system: the spread at a glance."""
    from loadgen.plots import plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, system in enumerate(SYSTEMS):
        rates = [metric_values(doc, system)["max rate at 90% SLO attainment (req/s)"]
                 for doc in docs]
        points = [r for r in rates if r is not None]
        ax.scatter([i] * len(points), points, label=f"{system} ({len(points)} runs)")
    ax.set_xticks(range(len(SYSTEMS)), SYSTEMS)
    ax.set_ylabel("max rate at 90% SLO attainment (req/s)")
    ax.set_xlim(-0.5, len(SYSTEMS) - 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
