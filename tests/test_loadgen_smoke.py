"""loadgen end to end: a few seconds of load on the baseline server and on a local fleet.

Covers: ``loadgen run`` sends exactly the schedule ``loadgen schedule`` prints for
the same arguments; every request gets a JSON line whose times are ordered
(scheduled <= send <= first progress <= finish); summary.json's numbers equal
those recomputed from the JSON lines; plots are written; queue depth per model
node is sampled from the fleet's Redis and plotted (for the baseline, from a
real Redis that a stand-in writes, since the baseline keeps no depth);
``loadgen sweep`` prints attainment per rate and the highest sustainable rate.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.baseline_process import BaselineProcess
from loadgen.cli import main

PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def baseline(tiny_models: Path) -> Iterator[str]:
    with BaselineProcess(tiny_models, workers=1, threads=1) as server:
        yield server.address


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _schedule(capsys: pytest.CaptureFixture[str], workload: list[str]) -> list[dict]:
    assert main(["schedule", *workload]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _check_run(out: Path, schedule: list[dict]) -> list[dict]:
    """The JSON lines match the schedule and the summary matches the JSON lines."""
    lines = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert [(r["index"], r["workflow"], r["scheduled_s"]) for r in lines] == \
        [(s["index"], s["workflow"], s["at"]) for s in schedule]
    for r in lines:
        assert r["status"] == "OK", r
        assert r["request_id"]
        assert r["scheduled_s"] <= r["send_s"] <= r["first_progress_s"] <= r["finish_s"]
        assert r["latency_s"] == pytest.approx(r["finish_s"] - r["scheduled_s"])
        assert r["slo_met"] == (r["latency_s"] <= r["slo_s"])

    summary = json.loads((out / "summary.json").read_text())
    latencies = [r["latency_s"] for r in lines]
    assert summary["requests"] == len(lines) == len(schedule)
    assert summary["ok"] == len(lines)
    assert summary["slo_met"] == sum(r["slo_met"] for r in lines)
    assert summary["attainment"] == pytest.approx(np.mean([r["slo_met"] for r in lines]))
    assert summary["latency"]["p50_s"] == pytest.approx(np.percentile(latencies, 50))
    assert summary["latency"]["p95_s"] == pytest.approx(np.percentile(latencies, 95))
    assert summary["latency"]["p99_s"] == pytest.approx(np.percentile(latencies, 99))
    assert summary["wall_s"] >= max(r["finish_s"] for r in lines)
    assert summary["throughput_rps"] == pytest.approx(len(lines) / summary["wall_s"])
    for workflow, stats in summary["by_workflow"].items():
        assert stats["requests"] == sum(r["workflow"] == workflow for r in lines)
    for plot in ("latency_cdf.png", "timeline.png", "queue_depth.png"):
        assert (out / plot).read_bytes().startswith(PNG)
    return lines


BASELINE_LOAD = ["--rate", "3", "--duration", "3", "--seed", "4", "--steps", "6",
                 "--mix", "txt2img=2,controlnet=1,lora=1,img2img=1,edit=1", "--slo", "1.5"]


def test_run_on_the_baseline(baseline: str, redis_url: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from services.common.fleet_state import FleetState

    schedule = _schedule(capsys, BASELINE_LOAD)
    state = FleetState.from_url(redis_url)
    stop = threading.Event()

    def stand_in_gateway() -> None:
        while not stop.is_set():
            state.add_depth("denoiser", "tiny-sd", 1)
            time.sleep(0.2)

    writer = threading.Thread(target=stand_in_gateway)
    writer.start()
    out = tmp_path / "out"
    try:
        assert main(["run", "--target", baseline, *BASELINE_LOAD, "--out", str(out), "--quiet",
                     "--redis-url", redis_url, "--depth-interval", "0.2"]) == 0
    finally:
        stop.set()
        writer.join()
    assert "SLO attainment" in capsys.readouterr().out
    _check_run(out, schedule)
    depth = json.loads((out / "queue_depth.json").read_text())
    seen = [s["depths"].get("denoiser:tiny-sd", 0) for s in depth]
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] > seen[0]


def test_run_on_a_local_fleet(fleet: object, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    load = ["--rate", "2", "--count", "4", "--seed", "5", "--steps", "4",
            "--mix", "txt2img=1,lora=1,edit=1", "--slo", "60"]
    schedule = _schedule(capsys, load)
    out = tmp_path / "fleet"
    assert main(["run", "--target", fleet.gateway_address, *load,  # type: ignore[attr-defined]
                 "--out", str(out), "--quiet", "--timeout", "120",
                 "--redis-url", fleet.redis_url, "--depth-interval", "0.1"]) == 0  # type: ignore[attr-defined]
    capsys.readouterr()
    _check_run(out, schedule)
    depth = json.loads((out / "queue_depth.json").read_text())
    assert any(n.startswith("denoiser:") and v > 0 for s in depth for n, v in s["depths"].items())


def test_sweep_reports_attainment_per_rate(baseline: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "--target", baseline, "--rates", "1,2", "--duration", "3",
                 "--steps", "4", "--slo", "5", "--seed", "2", "--cooldown", "0", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "highest rate with >= 90% SLO attainment" in printed
    data = json.loads((out / "sweep.json").read_text())
    assert [p["rate"] for p in data["points"]] == [1.0, 2.0]
    for point in data["points"]:
        records = [json.loads(line) for line in
                   (out / f"requests_rate{point['rate']:g}.jsonl").read_text().splitlines()]
        assert point["summary"]["requests"] == len(records)
        assert point["summary"]["attainment"] == pytest.approx(
            np.mean([r["slo_met"] for r in records]))
    assert (out / "sweep.png").read_bytes().startswith(PNG)
