"""CSV traces to replay: one row per request.

Columns (a header row is required): ``time_s`` (seconds from the start, any
order), and optionally ``workflow`` (one of :data:`loadgen.workload.WORKFLOWS`;
empty means "draw from the mix") and ``lora`` (a LoRA name for lora requests).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from loadgen.workload import WORKFLOWS


@dataclass(frozen=True)
class TraceRow:
    time_s: float
    workflow: str = ""
    lora: str = ""


def read_trace(path: str | Path) -> tuple[TraceRow, ...]:
    """Rows sorted by time; raises ValueError naming the file and line of a bad row."""
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "time_s" not in reader.fieldnames:
            raise ValueError(f"{path}: the header must name a time_s column")
        for line, row in enumerate(reader, start=2):
            try:
                t = float(row["time_s"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}:{line}: time_s {row['time_s']!r} is not a number") from None
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"{path}:{line}: time_s must be >= 0")
            workflow = (row.get("workflow") or "").strip()
            if workflow and workflow not in WORKFLOWS:
                raise ValueError(f"{path}:{line}: unknown workflow {workflow!r}")
            rows.append(TraceRow(t, workflow, (row.get("lora") or "").strip()))
    if not rows:
        raise ValueError(f"{path}: the trace has no rows")
    return tuple(sorted(rows, key=lambda r: r.time_s))
