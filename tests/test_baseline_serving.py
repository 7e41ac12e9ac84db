"""The serving benchmark's report and flags, without running systems.

Covers: the ratio table (max rate at 90% attainment, p95 at the fixed rate,
burst attainment, latency alone) from hand-made sweep results, "n/a" for a
system that did not run; the JSON form; bench/serving.py rejects bad flags.
"""

from __future__ import annotations

import pytest

from bench.serving import parse_settings
from bench.serving_report import SystemReport, format_table, ratio_rows
from loadgen.records import OK, RequestRecord
from loadgen.summary import summarize
from loadgen.sweep import SweepPoint


def _summary(latencies: list[float], slo: float = 1.0):
    records = [RequestRecord(index=i, workflow="txt2img", scheduled_s=0.0, slo_s=slo,
                             send_s=0.0, first_progress_s=0.0, finish_s=lat, status=OK)
               for i, lat in enumerate(latencies)]
    return summarize(records, wall_s=10.0)


def _report(name: str, attainments: list[float], p95_scale: float, burst: float) -> SystemReport:
    sweep = [SweepPoint(rate, _summary([0.5] * round(a * 10) + [2.0] * (10 - round(a * 10))))
             for rate, a in zip((1.0, 2.0, 3.0), attainments, strict=True)]
    return SystemReport(name, solo_s={"txt2img": 0.4 * p95_scale}, sweep=sweep,
                        fixed=_summary([0.1 * p95_scale] * 20),
                        bursts={4.0: _summary([0.5] * round(burst * 10)
                                              + [2.0] * (10 - round(burst * 10)))})


def test_ratio_table() -> None:
    base = _report("baseline", [1.0, 0.5, 0.1], p95_scale=2.0, burst=0.4)
    fleet = _report("fleet", [1.0, 0.9, 0.6], p95_scale=1.0, burst=0.8)
    rows = {r[0]: r[1:] for r in ratio_rows(base, fleet, 0.9, fixed_rate=1.0)}
    assert rows["max rate at 90% SLO attainment (req/s)"] == ("1", "2", "2.00x")
    assert rows["p95 latency at 1 req/s (s)"] == ("0.200", "0.100", "0.50x")
    assert rows["SLO attainment, bursts of 4x"] == ("40.0%", "80.0%", "2.00x")
    assert rows["txt2img alone, median latency (s)"] == ("0.800", "0.400", "0.50x")
    table = format_table(list(ratio_rows(base, fleet, 0.9, 1.0)))
    assert len({len(line) for line in table.splitlines()}) == 1
    assert fleet.to_dict(0.9)["max_rate_at_target"] == 2.0


def test_missing_fleet_shows_na() -> None:
    base = _report("baseline", [1.0, 0.5, 0.1], p95_scale=2.0, burst=0.4)
    rows = ratio_rows(base, SystemReport("fleet", error="ImportError"), 0.9, 1.0)
    assert all(row[2] == "n/a" and row[3] == "n/a" for row in rows)


@pytest.mark.parametrize("argv", [["--systems", "fleet"], ["--cpus", "0"], ["--size", "30"],
                                  ["--fleet-env", "NOVALUE"], ["--presets", "huge"],
                                  ["--repeats", "0"], ["--baseline-lora-cache", "-1"]])
def test_bad_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_settings(argv)
    assert info.value.code == 2


def test_quick_settings() -> None:
    settings = parse_settings(["--quick", "--fleet-env", "DFLEET_TORCH_THREADS=1"])
    assert settings.presets == ("tiny", "sdxl-shaped") and settings.duration_s < 10
    assert settings.repeats >= 2
    assert settings.fleet_env["DFLEET_TORCH_THREADS"] == "1"
    assert parse_settings([]).presets == ("small", "sdxl-shaped")


def _doc(base_rate: float, fleet_rate: float | None) -> dict:
    def system(rate: float | None) -> dict:
        if rate is None:
            return {"error": "did not start", "max_rate_at_target": None, "fixed_rate": None,
                    "bursts": {}, "solo_latency_s": {}}
        return {"max_rate_at_target": rate, "solo_latency_s": {"lora": 1.0 / rate},
                "fixed_rate": {"attainment": 1.0, "latency": {"p95_s": 0.5}},
                "bursts": {"8x": {"attainment": rate / 4}}}
    return {"systems": {"baseline": system(base_rate), "fleet": system(fleet_rate)}}


def test_spread_over_runs() -> None:
    from bench.serving_spread import spread_rows

    rows = {r[0]: r[1:] for r in spread_rows([_doc(1.0, 2.0), _doc(2.0, 3.0), _doc(1.5, None)])}
    assert rows["max rate at 90% SLO attainment (req/s)"] == ("1.5 [1-2]", "2.5 [2-3]",
                                                              "1.75 [1.5-2]")
    assert rows["SLO attainment, bursts of 8x"][0] == "0.375 [0.25-0.5]"
    assert rows["lora alone, median latency (s)"][2] == "0.583 [0.5-0.667]"
