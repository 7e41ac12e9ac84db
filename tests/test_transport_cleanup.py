"""Shared-memory cleanup when a producer does not close: a process that exits normally unlinks
its segments at exit; the segments of a process killed with SIGKILL are unlinked by the next
producer's orphan sweep, which leaves live processes' segments alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from services.common.transport import TensorExporter, local_peer
from services.common.transport.shm import SHM_DIR, reap_orphans

ROOT = Path(__file__).resolve().parents[1]
PRODUCE = """
import sys, torch
from services.common.transport import TensorExporter, local_peer
exporter = TensorExporter("")
refs = [exporter.export(torch.zeros(50_000), local_peer()) for _ in range(3)]
print(exporter.segment_prefix, flush=True)
if sys.argv[1] == "hang":
    sys.stdin.read()
"""


def _segments(prefix: str) -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]


def _start(mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCE, mode],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_segments_are_unlinked_at_exit_without_close() -> None:
    process = _start("exit")
    prefix = process.stdout.readline().strip()  # type: ignore[union-attr]
    assert process.wait(60) == 0
    assert prefix.startswith("dfleet-")
    assert _segments(prefix) == []


def test_orphans_of_killed_processes_are_reaped() -> None:
    live = TensorExporter("")
    process = _start("hang")
    try:
        prefix = process.stdout.readline().strip()  # type: ignore[union-attr]
        assert len(_segments(prefix)) == 3
        live.export(torch.zeros(50_000), local_peer())
        reap_orphans()
        assert len(_segments(prefix)) == 3  # its owner still runs
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        assert len(_segments(prefix)) == 3  # no atexit hook ran
        assert reap_orphans() >= 3
        assert _segments(prefix) == []
        assert len(_segments(live.segment_prefix)) == 1
    finally:
        if process.poll() is None:
            process.kill()
        live.close()
