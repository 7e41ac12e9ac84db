"""loadgen without a server: schedules, arrival processes, the CLI's argument checks, summaries.

Covers: the same seed gives the same schedule (two runs of ``loadgen schedule``
compared, for every arrival process) and another seed another one; the request
contents do not depend on the rate; arrival processes have the asked rate, CV and
bursts; count and duration bounds; trace replay; LoRA popularity; bad arguments
exit with code 2 and a message; an unreachable gateway exits with 1; summary
numbers and table from hand-made records.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from loadgen.arrivals import ArrivalSpec, arrival_times
from loadgen.cli import main
from loadgen.records import OK, RequestRecord, read_records, write_records
from loadgen.schedule import ScheduleSpec, build_schedule
from loadgen.summary import format_summary, summarize
from loadgen.sweep import SweepPoint, sustainable_rate
from loadgen.workload import WorkloadSpec, lora_weights

pytestmark = pytest.mark.timeout(60)

MIX = "txt2img=3,controlnet=1,lora=2,img2img=1,edit=1"


def _schedule_lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict]:
    assert main(["schedule", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("arrival", [
    ["--arrival", "poisson", "--rate", "5"],
    ["--arrival", "gamma", "--rate", "5", "--cv", "3"],
    ["--arrival", "onoff", "--rate", "2", "--burst-factor", "8", "--on-s", "1", "--off-s", "3"],
])
def test_same_seed_same_schedule(capsys: pytest.CaptureFixture[str], arrival: list[str]) -> None:
    argv = [*arrival, "--duration", "20", "--mix", MIX, "--seed", "11", "--slo", "txt2img=2"]
    first = _schedule_lines(capsys, argv)
    second = _schedule_lines(capsys, argv)
    assert len(first) > 10
    assert first == second
    other = _schedule_lines(capsys, [*argv[:-4], "--seed", "12"])
    assert other != first
    assert {r["workflow"] for r in first} == {"txt2img", "controlnet", "lora", "img2img", "edit"}
    assert all(r["slo_s"] == (2.0 if r["workflow"] == "txt2img" else 10.0) for r in first)
    assert all(r["lora"] for r in first if r["workflow"] == "lora")
    assert all(0.1 <= r["mask_ratio"] <= 0.4 for r in first if r["workflow"] == "edit")


def test_contents_do_not_depend_on_the_rate() -> None:
    work = WorkloadSpec(mix={"txt2img": 1, "lora": 1, "edit": 1})
    slow = build_schedule(ScheduleSpec(ArrivalSpec(rate=1.0), work, seed=3, count=50))
    fast = build_schedule(ScheduleSpec(ArrivalSpec(rate=4.0), work, seed=3, count=50))
    assert [(r.workflow, r.seed, r.prompt, r.lora) for r in slow] == \
        [(r.workflow, r.seed, r.prompt, r.lora) for r in fast]
    assert fast[-1].at < slow[-1].at


def test_poisson_and_gamma_rates_and_cv() -> None:
    rng = np.random.default_rng(0)
    poisson = np.diff([0.0, *arrival_times(ArrivalSpec("poisson", rate=4.0), rng, 20000, None)])
    assert poisson.mean() == pytest.approx(0.25, rel=0.03)
    assert poisson.std() / poisson.mean() == pytest.approx(1.0, rel=0.05)
    gamma = np.diff([0.0, *arrival_times(ArrivalSpec("gamma", rate=4.0, cv=3.0), rng, 20000,
                                         None)])
    assert gamma.mean() == pytest.approx(0.25, rel=0.1)
    assert gamma.std() / gamma.mean() == pytest.approx(3.0, rel=0.1)


def test_onoff_bursts_at_the_factor() -> None:
    spec = ArrivalSpec("onoff", rate=2.0, burst_factor=8.0, on_s=1.0, off_s=3.0)
    times = np.array(arrival_times(spec, np.random.default_rng(1), None, 4000.0))
    phase = times % 4.0
    off_rate = np.sum(phase < 3.0) / (1000 * 3.0)
    on_rate = np.sum(phase >= 3.0) / (1000 * 1.0)
    assert off_rate == pytest.approx(2.0, rel=0.05)
    assert on_rate == pytest.approx(16.0, rel=0.05)


def test_count_and_duration_bound_the_schedule() -> None:
    spec = ScheduleSpec(ArrivalSpec(rate=10.0), WorkloadSpec(), seed=0, count=7, duration=100.0)
    assert len(build_schedule(spec)) == 7
    timed = build_schedule(replace(spec, count=None, duration=3.0))
    assert timed and all(r.at <= 3.0 for r in timed)
    assert [r.index for r in timed] == list(range(len(timed)))
    with pytest.raises(ValueError, match="count or a duration"):
        build_schedule(replace(spec, count=None, duration=None))


def test_trace_replay(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,workflow,lora\n2.0,lora,tiny-lora-r8\n0.5,edit,\n1.0,,\n")
    rows = _schedule_lines(capsys, ["--trace", str(trace), "--seed", "1"])
    assert [r["at"] for r in rows] == [0.5, 1.0, 2.0]
    assert rows[0]["workflow"] == "edit" and rows[2]["workflow"] == "lora"
    assert rows[2]["lora"] == "tiny-lora-r8"
    fast = _schedule_lines(capsys, ["--trace", str(trace), "--time-scale", "2"])
    assert [r["at"] for r in fast] == [0.25, 0.5, 1.0]
    bounded = _schedule_lines(capsys, ["--trace", str(trace), "--count", "2"])
    assert len(bounded) == 2


def test_lora_popularity() -> None:
    zipf = lora_weights("zipf:1.0", 4)
    assert zipf == pytest.approx(np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))
    assert lora_weights("uniform", 3) == pytest.approx([1 / 3] * 3)
    work = WorkloadSpec(mix={"lora": 1}, loras=("a", "b", "c"), lora_popularity="zipf:2")
    schedule = build_schedule(ScheduleSpec(ArrivalSpec(rate=100.0), work, seed=5, count=3000))
    counts = {name: sum(r.lora == name for r in schedule) for name in "abc"}
    assert counts["a"] > counts["b"] > counts["c"] > 0


@pytest.mark.parametrize("argv, message", [
    (["schedule", "--rate", "-1", "--count", "3"], "--rate"),
    (["schedule", "--rate", "fast", "--count", "3"], "not a number"),
    (["schedule", "--count", "0"], "--count"),
    (["schedule", "--rate", "1"], "count or a duration"),
    (["schedule", "--rate", "0.001", "--duration", "1"], "schedule is empty"),
    (["schedule", "--count", "3", "--mix", "video=1"], "unknown workflow"),
    (["schedule", "--count", "3", "--mix", "txt2img=0"], "weight > 0"),
    (["schedule", "--count", "3", "--slo", "video=1"], "unknown workflow"),
    (["schedule", "--count", "3", "--slo", "txt2img=-2"], "> 0"),
    (["schedule", "--count", "3", "--mask-ratio", "0.5:0.2"], "lo <= hi"),
    (["schedule", "--count", "3", "--lora-popularity", "zipf:x"], "zipf"),
    (["schedule", "--count", "3", "--width", "30"], "multiples of 8"),
    (["schedule", "--count", "3", "--arrival", "weibull"], "invalid choice"),
    (["schedule", "--trace", "/no/such/trace.csv"], "No such file"),
    (["schedule", "--arrival", "trace", "--count", "3"], "needs --trace"),
    (["run", "--count", "3"], "--target"),
    (["sweep", "--target", "127.0.0.1:1", "--count", "3"], "--rates"),
    (["sweep", "--target", "127.0.0.1:1", "--count", "3", "--rates", "1,x"], "not a number"),
    ([], "command"),
])
def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str], argv: list[str],
                                   message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_trace_row_names_the_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("time_s,workflow\n1.0,txt2img\nsoon,txt2img\n")
    with pytest.raises(SystemExit) as info:
        main(["schedule", "--trace", str(trace)])
    assert info.value.code == 2
    assert "bad.csv:3" in capsys.readouterr().err


def test_unreachable_gateway_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--target", "127.0.0.1:1", "--count", "1", "--quiet"]) == 1
    assert "127.0.0.1:1" in capsys.readouterr().err


def _record(i: int, workflow: str, latency: float | None, status: str = OK,
            slo: float = 1.0) -> RequestRecord:
    return RequestRecord(index=i, workflow=workflow, scheduled_s=float(i), slo_s=slo,
                         send_s=float(i), first_progress_s=None if latency is None else i + 0.01,
                         finish_s=None if latency is None else i + latency, status=status)


def test_summary_numbers(tmp_path: Path) -> None:
    latencies = [0.2, 0.4, 0.6, 0.8, 1.5, 3.0]
    records = [_record(i, "txt2img" if i % 2 else "lora", lat) for i, lat in enumerate(latencies)]
    records += [_record(6, "lora", 0.1, status="RESOURCE_EXHAUSTED"),
                _record(7, "txt2img", 5.0, status="DEADLINE_EXCEEDED"),
                _record(8, "txt2img", None, status="NOT_SENT")]
    summary = summarize(records, wall_s=10.0)
    assert summary.requests == 9 and summary.ok == 6
    assert summary.slo_met == 4  # 0.2, 0.4, 0.6, 0.8 within 1 s; failures never count
    assert summary.attainment == pytest.approx(4 / 9)
    assert summary.throughput_rps == pytest.approx(0.6)
    assert summary.goodput_rps == pytest.approx(0.4)
    assert summary.latency.p50_s == pytest.approx(np.percentile(latencies, 50))
    assert summary.latency.p95_s == pytest.approx(np.percentile(latencies, 95))
    assert summary.latency.p99_s == pytest.approx(np.percentile(latencies, 99))
    assert summary.errors == {"DEADLINE_EXCEEDED": 1, "NOT_SENT": 1, "RESOURCE_EXHAUSTED": 1}
    assert summary.by_workflow["lora"]["requests"] == 4
    assert summary.by_workflow["lora"]["attainment"] == pytest.approx(2 / 4)
    table = format_summary(summary)
    assert "44.4%" in table and "RESOURCE_EXHAUSTED 1" in table
    write_records(tmp_path / "r.jsonl", records)
    assert read_records(tmp_path / "r.jsonl") == records
    line = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[6])
    assert line["error_code"] == "RESOURCE_EXHAUSTED" and line["slo_met"] is False


def test_sustainable_rate_needs_every_lower_rate() -> None:
    def point(rate: float, attainment: float) -> SweepPoint:
        records = [_record(i, "txt2img", 0.5 if i < attainment * 10 else 2.0) for i in range(10)]
        return SweepPoint(rate, summarize(records, 10.0))

    points = [point(1, 1.0), point(2, 0.9), point(3, 0.5), point(4, 1.0)]
    assert sustainable_rate(points, 0.9) == 2
    assert sustainable_rate([point(1, 0.5)], 0.9) is None
