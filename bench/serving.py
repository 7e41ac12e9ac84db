"""``make bench-serving``: the fleet against the monolithic baseline, same trace, seed and CPUs.

For each system: the median latency of each workflow alone; a rate sweep (SLO
attainment per rate and the highest rate keeping the target); the p95 latency
at one fixed rate; attainment under on/off bursts of 4x and 8x a base rate.
SLOs are ``--slo-scale`` times the baseline's latency of each workflow alone,
and the rates are multiples of the baseline's estimated capacity (CPUs over the
mean latency alone), so both systems get the same SLOs and the same rates.

Both systems get the same CPUs: the benchmark pins itself (and so every
process it starts, the load generator included) to the first ``--cpus`` CPUs,
and the baseline runs ``--cpus`` workers with one torch thread each.

    python bench/serving.py [--quick] [--systems baseline,fleet] [--out bench/results]

Prints the ratio table; writes serving.json, serving_sweep.png and per-run
JSON lines and plots under ``--out``/serving/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baseline_process import BaselineProcess
from bench.serving_report import SystemReport, format_table, ratio_rows, write_sweep_plot
from loadgen.arrivals import ArrivalSpec
from loadgen.plots import write_run_plots
from loadgen.records import OK, write_records
from loadgen.runner import RunOptions, RunResult, run_load
from loadgen.schedule import ScheduledRequest, ScheduleSpec, build_schedule
from loadgen.summary import summarize
from loadgen.sweep import run_sweep
from loadgen.workload import WorkloadSpec

TARGET = 0.9


@dataclass(frozen=True)
class ServingSettings:
    preset: str = "small"  # model tree preset (services.common.tiny_model)
    size: int = 128  # image side in pixels
    steps: int = 10
    cpus: int = len(os.sched_getaffinity(0))
    seed: int = 0
    duration_s: float = 15.0  # arrivals per sweep point and per fixed-rate run
    slo_scale: float = 3.0  # SLO = scale x the baseline's latency alone
    # Sweep rates as factors of the capacity estimate; a rate whose attainment falls
    # under 50% skips the higher ones, so a fine grid costs little past the knee.
    rate_factors: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0)
    fixed_factor: float = 0.3  # the fixed rate, as a factor of the capacity estimate
    burst_factors: tuple[float, ...] = (4.0, 8.0)
    burst_base_factor: float = 0.2  # base rate of the burst runs
    burst_on_s: float = 2.0
    burst_off_s: float = 6.0
    burst_duration_s: float = 16.0
    solo_repeats: int = 3
    mix: dict[str, float] = field(default_factory=lambda: {
        "txt2img": 0.3, "controlnet": 0.2, "lora": 0.4, "edit": 0.1})
    systems: tuple[str, ...] = ("baseline", "fleet")
    fleet_env: dict[str, str] = field(default_factory=lambda: {"OMP_WAIT_POLICY": "PASSIVE"})
    out: Path = Path("bench/results")


def model_tree(settings: ServingSettings) -> Path:
    """The preset's tree under ``out``, written once and reused."""
    from services.common.tiny_model import write_tiny_model

    root = settings.out / f"models-{settings.preset}"
    tree = root / "tree.json"
    if not (tree.exists() and json.loads(tree.read_text()).get("preset") == settings.preset):
        write_tiny_model(root, seed=0, preset=settings.preset)
    return root


@contextlib.contextmanager
def running(name: str, models: Path, settings: ServingSettings,
            logs: Path) -> Iterator[tuple[str, str]]:
    """Starts a system; yields (gateway address, Redis URL or "")."""
    logs.mkdir(parents=True, exist_ok=True)
    if name == "baseline":
        with BaselineProcess(models, workers=settings.cpus, threads=1,
                             log_path=logs / "baseline.log") as server:
            yield server.address, ""
        return
    from dfleet.local_fleet import LocalFleet  # the lead's launcher; absent means no fleet run

    with LocalFleet(str(models), state_dir=str(logs / "fleet"),
                    env=dict(settings.fleet_env)) as fleet:
        yield fleet.gateway_address, fleet.redis_url


def solo_latencies(address: str, work: WorkloadSpec, repeats: int) -> dict[str, float]:
    """Median latency of each workflow with nothing else running (one warm-up each)."""
    requests: list[ScheduledRequest] = []
    for workflow in work.mix:
        for i in range(repeats + 1):
            requests.append(ScheduledRequest(index=len(requests), at=0.0, workflow=workflow,
                                             seed=i, prompt="a lighthouse, photo",
                                             lora=work.loras[0], controlnet=work.controlnets[0],
                                             mask_ratio=0.25, slo_s=1e9))
    result = run_load(requests, work, RunOptions(address, concurrency=1, timeout_s=300,
                                                 progress=False))
    failed = [r for r in result.records if r.status != OK]
    if failed:
        raise RuntimeError(f"solo request failed: {failed[0].status} {failed[0].error}")
    solo: dict[str, float] = {}
    for workflow in work.mix:
        mine = [r for r in result.records if r.workflow == workflow][1:]
        solo[workflow] = statistics.median(r.finish_s - r.send_s for r in mine)  # type: ignore[operator]
    return solo


def save_run(result: RunResult, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_records(folder / "requests.jsonl", result.records)
    write_run_plots(result.records, result.depth, folder)


def bench_system(name: str, address: str, redis_url: str, spec: ScheduleSpec,
                 rates: list[float], fixed_rate: float, settings: ServingSettings,
                 out: Path, solo: dict[str, float] | None = None) -> SystemReport:
    report = SystemReport(name)
    report.solo_s = solo or solo_latencies(address, spec.workload, settings.solo_repeats)
    print(f"[{name}] alone: " + ", ".join(f"{w} {s:.3f}s" for w, s in report.solo_s.items()),
          flush=True)
    timeout = 3 * max(spec.workload.slos.values())
    options = RunOptions(address, timeout_s=timeout, redis_url=redis_url, label=name)
    report.sweep = run_sweep(spec, rates, options, stop_below=0.5, cooldown_s=1.0,
                             on_point=lambda p: print(
                                 f"[{name}] {p.rate:.3g} req/s: " + (
                                     f"attainment {p.summary.attainment:.1%}" if p.summary
                                     else "skipped"), flush=True))
    for point in report.sweep:
        if point.result is not None:
            save_run(point.result, out / f"rate_{point.rate:.3g}")
    fixed = next((p for p in report.sweep if p.rate == fixed_rate and p.summary), None)
    if fixed is None:  # skipped in the sweep: run it anyway
        rated = replace(spec, arrivals=replace(spec.arrivals, rate=fixed_rate))
        result = run_load(build_schedule(rated), spec.workload, options)
        save_run(result, out / f"rate_{fixed_rate:.3g}")
        report.fixed = summarize(result.records, result.wall_s)
    else:
        report.fixed = fixed.summary
    for factor in settings.burst_factors:
        bursty = replace(spec, duration=settings.burst_duration_s, arrivals=ArrivalSpec(
            "onoff", rate=fixed_rate * settings.burst_base_factor / settings.fixed_factor,
            burst_factor=factor, on_s=settings.burst_on_s, off_s=settings.burst_off_s))
        result = run_load(build_schedule(bursty), spec.workload,
                          replace(options, label=f"{name} bursts {factor:g}x"))
        save_run(result, out / f"bursts_{factor:g}x")
        report.bursts[factor] = summarize(result.records, result.wall_s)
        print(f"[{name}] bursts {factor:g}x: attainment {report.bursts[factor].attainment:.1%}",
              flush=True)
    return report


def run(settings: ServingSettings) -> dict:
    started = time.monotonic()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:settings.cpus])
    settings.out.mkdir(parents=True, exist_ok=True)
    models = model_tree(settings)
    work = WorkloadSpec(mix=settings.mix, model="tiny-sd", width=settings.size,
                        height=settings.size, steps=settings.steps,
                        loras=("tiny-lora-r4", "tiny-lora-r8"),
                        controlnets=("tiny-cn-a", "tiny-cn-b"))
    runs = settings.out / "serving"
    reports: dict[str, SystemReport] = {}
    spec: ScheduleSpec | None = None
    rates: list[float] = []
    fixed_rate = 0.0
    solo: dict[str, float] | None = None
    for name in ("baseline", "fleet"):
        if name not in settings.systems:
            reports[name] = SystemReport(name, error="not requested")
            continue
        t0 = time.monotonic()
        try:
            with running(name, models, settings, runs / name) as (address, redis_url):
                reports[name] = SystemReport(name, start_s=time.monotonic() - t0)
                if spec is None:  # the baseline calibrates SLOs and rates for both systems
                    solo = solo_latencies(address, work, settings.solo_repeats)
                    work = replace(work, slos={w: settings.slo_scale * s for w, s in solo.items()})
                    weights = sum(settings.mix.values())
                    mean_s = sum(settings.mix[w] * solo[w] for w in solo) / weights
                    capacity = settings.cpus / mean_s
                    rates = [round(capacity * f, 3) for f in settings.rate_factors]
                    fixed_rate = round(capacity * settings.fixed_factor, 3)
                    spec = ScheduleSpec(ArrivalSpec("poisson", rate=fixed_rate), work,
                                        seed=settings.seed, duration=settings.duration_s)
                    print(f"SLOs (s): {json.dumps({w: round(s, 3) for w, s in work.slos.items()})}"
                          f"; capacity estimate {capacity:.3g} req/s; rates {rates}", flush=True)
                start_s = reports[name].start_s
                reports[name] = bench_system(name, address, redis_url, spec, rates, fixed_rate,
                                             settings, runs / name,
                                             solo if name == "baseline" else None)
                reports[name].start_s = start_s
        except Exception as error:  # noqa: BLE001 - a system that fails is reported, not fatal
            reports[name] = SystemReport(name, error=f"{type(error).__name__}: {error}")
            print(f"[{name}] could not be benchmarked: {reports[name].error}", flush=True)
            if name == "baseline":
                break
    rows = ratio_rows(reports["baseline"], reports.get("fleet", SystemReport("fleet")), TARGET,
                      fixed_rate)
    print()
    print(format_table(rows))
    for name, report in reports.items():
        if report.error:
            print(f"{name}: {report.error}")
    doc = {
        "settings": {**asdict(settings), "out": str(settings.out)},
        "machine": {"cpus_used": settings.cpus, "cpu_count": os.cpu_count()},
        "slos_s": work.slos, "rates": rates, "fixed_rate": fixed_rate, "target": TARGET,
        "systems": {n: r.to_dict(TARGET) for n, r in reports.items()},
        "table": [dict(zip(("metric", "baseline", "fleet", "ratio"), r, strict=True))
                  for r in rows],
        "elapsed_s": time.monotonic() - started,
    }
    (settings.out / "serving.json").write_text(json.dumps(doc, indent=1, default=str))
    write_sweep_plot(list(reports.values()), TARGET, settings.out / "serving_sweep.png")
    print(f"wrote {settings.out}/serving.json, serving_sweep.png and runs under {runs}/ "
          f"in {doc['elapsed_s']:.0f} s")
    return doc


QUICK = {"preset": "tiny", "size": 64, "steps": 8, "duration_s": 4.0,
         "rate_factors": (0.5, 1.0, 2.0), "burst_duration_s": 6.0, "burst_off_s": 2.0,
         "burst_on_s": 1.0, "solo_repeats": 2}


def parse_settings(argv: list[str] | None = None) -> ServingSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, short runs: checks the pipeline of the benchmark")
    parser.add_argument("--preset", choices=("tiny", "small"))
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cpus", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--duration", type=float, dest="duration_s")
    parser.add_argument("--slo-scale", type=float)
    parser.add_argument("--systems", help="comma-separated: baseline,fleet")
    parser.add_argument("--fleet-env", action="append", default=[],
                        help="KEY=VALUE for every fleet process (repeatable)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    for key in ("preset", "size", "steps", "cpus", "seed", "duration_s", "slo_scale", "out"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.systems:
        values["systems"] = tuple(s.strip() for s in args.systems.split(","))
        if "baseline" not in values["systems"]:
            parser.error("--systems must include baseline: it calibrates SLOs and rates")
    if args.fleet_env:
        env = dict(ServingSettings().fleet_env)
        for item in args.fleet_env:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--fleet-env {item!r} is not KEY=VALUE")
            env[key] = value
        values["fleet_env"] = env
    settings = ServingSettings(**values)
    available = len(os.sched_getaffinity(0))
    if not 1 <= settings.cpus <= available:
        parser.error(f"--cpus {settings.cpus} must be in [1, {available}]")
    if settings.size % 8 or settings.steps < 1:
        parser.error("--size must be a multiple of 8 and --steps >= 1")
    return settings


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    run(parse_settings(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
