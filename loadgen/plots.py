"""PNG plots of a run (matplotlib, Agg backend): latency CDF, timeline, queue depth, sweep."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from loadgen.depth import DepthSample
from loadgen.records import OK, RequestRecord


def in_flight_series(records: list[RequestRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Step series (times, requests sent and not finished) from the records."""
    changes = [(r.send_s, 1) for r in records if r.send_s is not None]
    changes += [(r.finish_s, -1) for r in records
                if r.send_s is not None and r.finish_s is not None]
    changes.sort()
    times = np.array([0.0] + [t for t, _ in changes])
    counts = np.cumsum([0] + [d for _, d in changes])
    return times, counts


def plot_latency_cdf(records: list[RequestRecord], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for workflow in sorted({r.workflow for r in records}) + ["all"]:
        values = sorted(r.latency_s for r in records if r.status == OK and r.latency_s is not None
                        and (workflow == "all" or r.workflow == workflow))
        if values:
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                    label=workflow, linewidth=2 if workflow == "all" else 1)
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("fraction of successful requests")
    ax.set_title("latency CDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_timeline(records: list[RequestRecord], path: Path) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ok = [r for r in records if r.status == OK and r.finish_s is not None]
    bad = [r for r in records if r.status != OK and r.finish_s is not None]
    top.scatter([r.finish_s for r in ok], [r.latency_s for r in ok], s=8, label="ok")
    top.scatter([r.finish_s for r in bad], [r.latency_s for r in bad], s=8, c="red",
                marker="x", label="failed")
    top.set_ylabel("latency (s)")
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    times, counts = in_flight_series(records)
    bottom.step(times, counts, where="post")
    bottom.set_xlabel("time since start (s)")
    bottom.set_ylabel("in flight")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_queue_depth(samples: list[DepthSample], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    nodes = sorted({node for s in samples for node in s.depths})
    for node in nodes:
        ax.step([s.t for s in samples], [s.depths.get(node, 0) for s in samples], where="post",
                label=node)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("queue depth (tasks)")
    ax.set_title("queue depth per model node")
    ax.grid(alpha=0.3)
    if nodes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(series: dict[str, list[tuple[float, float]]], target: float, path: Path) -> None:
    """``series`` maps a system name to (rate, attainment) points."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_run_plots(records: list[RequestRecord], depth: list[DepthSample],
                    out: Path) -> list[Path]:
    """Writes the run's plots into ``out``; the queue depth plot only with samples."""
    written = [out / "latency_cdf.png", out / "timeline.png"]
    plot_latency_cdf(records, written[0])
    plot_timeline(records, written[1])
    if depth:
        written.append(out / "queue_depth.png")
        plot_queue_depth(depth, written[-1])
    return written
