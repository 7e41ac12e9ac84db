"""One record per scheduled request, written as a JSON line.

Times are seconds from the start of the run. ``latency_s`` runs from the
*scheduled* send time to the end, so time a request waited behind the
concurrency cap counts against it (no coordinated omission).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

OK = "OK"
NOT_SENT = "NOT_SENT"


@dataclass
class RequestRecord:
    index: int
    workflow: str
    scheduled_s: float
    slo_s: float
    send_s: float | None = None
    first_progress_s: float | None = None
    finish_s: float | None = None
    status: str = NOT_SENT  # OK, or the gRPC status name of the failure
    error: str = ""
    request_id: str = ""
    lora: str = ""
    controlnet: str = ""
    mask_ratio: float = 0.0

    @property
    def latency_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.scheduled_s

    @property
    def slo_met(self) -> bool:
        latency = self.latency_s
        return self.status == OK and latency is not None and latency <= self.slo_s

    def to_json(self) -> str:
        data = asdict(self)
        data["latency_s"] = self.latency_s
        data["slo_met"] = self.slo_met
        data["error_code"] = "" if self.status == OK else self.status
        return json.dumps(data, sort_keys=True)


def write_records(path: str | Path, records: list[RequestRecord]) -> None:
    with open(path, "w") as f:
        f.writelines(record.to_json() + "\n" for record in records)


def read_records(path: str | Path) -> list[RequestRecord]:
    records = []
    fields = set(RequestRecord.__dataclass_fields__)
    for line in Path(path).read_text().splitlines():
        if line.strip():
            data = json.loads(line)
            records.append(RequestRecord(**{k: v for k, v in data.items() if k in fields}))
    return records
