"""``make bench-serving``: the fleet against the monolithic baseline, same trace, seed and CPUs.

For each system: the median latency of each workflow alone; a rate sweep (SLO
attainment per rate and the highest rate keeping the target); the p95 latency
at one fixed rate; attainment under on/off bursts of 4x and 8x a base rate.
SLOs are ``--slo-scale`` times the baseline's latency of each workflow alone,
and the rates are multiples of the baseline's estimated capacity (CPUs over the
mean latency alone), so both systems get the same SLOs and the same rates. Both
systems stay up together and take turns at each rate, so that other work on the
machine falls on both alike.

Both systems get the same CPUs: the benchmark pins itself (and so every
process it starts, the load generator included) to the first ``--cpus`` CPUs,
and the baseline runs ``--cpus`` workers with one torch thread each. The
fleet, likewise, runs ``--cpus`` denoiser replicas and one torch thread per
process (``--fleet-env`` / ``--fleet-replicas`` change that). The baseline
is its best case: each worker keeps a few LoRAs loaded (``--baseline-lora-cache``).

Each preset (``bench/serving_presets.py``: the SD1.5-shaped ``small`` and the
production-shaped ``sdxl-shaped``) is run ``--repeats`` times, each run on a new
trace (seed + run index) that both systems replay; the spread over the runs is
the median and range of each figure.

    python bench/serving.py [--quick] [--presets small sdxl-shaped] [--repeats 3]
        [--systems baseline,fleet] [--out bench/results]
        [--fleet-env KEY=VALUE ...] [--fleet-replicas ROLE=N ...]

Prints each run's ratio table and each preset's spread table; writes
``--out``/PRESET/run_N/serving.json (with serving_sweep.png, and per-run JSON
lines and plots under serving/), ``--out``/PRESET/serving_spread.png and
``--out``/serving_summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serving_presets import PRESETS, PresetTree, preset_tree
from bench.serving_report import SystemReport, format_table, ratio_rows, write_sweep_plot
from bench.serving_spread import spread_rows, write_spread_plot
from bench.serving_systems import Target, running, solo_latencies
from loadgen.arrivals import ArrivalSpec
from loadgen.plots import write_run_plots
from loadgen.records import write_records
from loadgen.runner import RunOptions, run_load
from loadgen.schedule import ScheduleSpec, build_schedule
from loadgen.summary import Summary, summarize
from loadgen.sweep import SweepPoint
from loadgen.workload import WorkloadSpec

TARGET = 0.9


@dataclass(frozen=True)
class ServingSettings:
    presets: tuple[str, ...] = ("small", "sdxl-shaped")  # run one after the other
    repeats: int = 3  # whole runs per preset, each on a new trace, for the spread
    preset: str = "small"  # this run's model tree preset (bench.serving_presets)
    size: int = 128  # image side in pixels
    steps: int = 10
    loras: int = 32  # LoRA files of the sdxl-shaped tree
    baseline_lora_cache: int = 4  # LoRAs each baseline worker keeps loaded (its best case)
    cpus: int = len(os.sched_getaffinity(0))
    seed: int = 0
    duration_s: float = 20.0  # arrivals per sweep point and per fixed-rate run
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
    sweep_budget_s: float = 420.0  # both systems' sweeps together; later rates are skipped
    systems: tuple[str, ...] = ("baseline", "fleet")
    # The fleet's CPU layout, like the baseline's: one torch thread per process, one
    # denoiser per CPU (models loaded before serving), each stepping one request at a time.
    fleet_env: dict[str, str] = field(default_factory=lambda: {
        "DFLEET_TORCH_THREADS": "1", "DFLEET_PRELOAD": "all", "DFLEET_MAX_ACTIVE_REQUESTS": "1"})
    fleet_replicas: dict[str, int] = field(default_factory=dict)  # default: denoiser = cpus
    out: Path = Path("bench/results")
    models_out: Path = Path("bench/results")  # model trees, shared by every run


@dataclass
class Plan:
    """What every system is measured on, calibrated on the baseline."""

    spec: ScheduleSpec
    rates: list[float]
    fixed_rate: float
    burst_base_rate: float
    capacity: float


def calibrate(settings: ServingSettings, work: WorkloadSpec, solo: dict[str, float]) -> Plan:
    work = replace(work, slos={w: settings.slo_scale * s for w, s in solo.items()})
    mean_s = sum(work.mix[w] * solo[w] for w in solo) / sum(work.mix.values())
    capacity = settings.cpus / mean_s
    spec = ScheduleSpec(ArrivalSpec("poisson", rate=1.0), work, seed=settings.seed,
                        duration=settings.duration_s)
    return Plan(spec=spec, rates=[round(capacity * f, 3) for f in settings.rate_factors],
                fixed_rate=round(capacity * settings.fixed_factor, 3),
                burst_base_rate=round(capacity * settings.burst_base_factor, 3),
                capacity=capacity)


def measure(target: Target, spec: ScheduleSpec, label: str, out: Path) -> Summary | None:
    """One run of ``spec`` against ``target``; requests time out at 3x the largest SLO.
    None when no arrival fell within the run (a duration too short for its rate)."""
    try:
        schedule = build_schedule(spec)
    except ValueError as error:
        print(f"[{label}] not run: {error}", flush=True)
        return None
    options = RunOptions(target.address, timeout_s=3 * max(spec.workload.slos.values()),
                         redis_url=target.redis_url, label=label)
    result = run_load(schedule, spec.workload, options)
    out.mkdir(parents=True, exist_ok=True)
    write_records(out / "requests.jsonl", result.records)
    write_run_plots(result.records, result.depth, out)
    return summarize(result.records, result.wall_s)


def sweep(targets: dict[str, Target], reports: dict[str, SystemReport], plan: Plan,
          settings: ServingSettings, runs: Path) -> None:
    """Rates in increasing order, the systems taking turns at each rate, so that other load
    on the machine falls on both alike. A system stops once its attainment falls under
    50%; every system stops when the sweep's time budget is spent."""
    deadline = time.monotonic() + settings.sweep_budget_s
    active = set(targets)
    for rate in plan.rates:
        for name, target in targets.items():
            if name not in active or time.monotonic() > deadline:
                note = ("attainment collapsed at a lower rate" if name not in active
                        else "sweep time budget spent")
                reports[name].sweep.append(SweepPoint(rate, None, note=note))
                continue
            rated = replace(plan.spec, arrivals=replace(plan.spec.arrivals, rate=rate))
            summary = measure(target, rated, f"{name} {rate:.3g}/s",
                              runs / name / f"rate_{rate:g}")
            if summary is None:
                reports[name].sweep.append(SweepPoint(rate, None, note="no arrival in the run"))
                continue
            reports[name].sweep.append(SweepPoint(rate, summary))
            print(f"[{name}] {rate:.3g} req/s: attainment {summary.attainment:.1%}, "
                  f"p95 {summary.latency.p95_s or float('nan'):.2f}s", flush=True)
            if summary.attainment < 0.5:
                active.discard(name)


def fixed_and_bursts(targets: dict[str, Target], reports: dict[str, SystemReport], plan: Plan,
                     settings: ServingSettings, runs: Path) -> None:
    for name, target in targets.items():
        point = next((p for p in reports[name].sweep
                      if p.rate == plan.fixed_rate and p.summary is not None), None)
        if point is None:  # skipped in the sweep: run it now
            rated = replace(plan.spec, arrivals=replace(plan.spec.arrivals, rate=plan.fixed_rate))
            reports[name].fixed = measure(target, rated, f"{name} fixed", runs / name / "fixed")
        else:
            reports[name].fixed = point.summary
    for factor in settings.burst_factors:
        bursty = replace(plan.spec, duration=settings.burst_duration_s, arrivals=ArrivalSpec(
            "onoff", rate=plan.burst_base_rate, burst_factor=factor, on_s=settings.burst_on_s,
            off_s=settings.burst_off_s))
        for name, target in targets.items():
            summary = measure(target, bursty, f"{name} bursts {factor:g}x",
                              runs / name / f"bursts_{factor:g}x")
            if summary is not None:
                reports[name].bursts[factor] = summary
                print(f"[{name}] bursts {factor:g}x: attainment {summary.attainment:.1%}",
                      flush=True)


def start_systems(stack: contextlib.ExitStack, settings: ServingSettings, tree: PresetTree,
                  runs: Path, reports: dict[str, SystemReport]) -> dict[str, Target]:
    targets: dict[str, Target] = {}
    for name in ("baseline", "fleet"):
        if name not in settings.systems:
            reports[name] = SystemReport(name, error="not requested")
            continue
        t0 = time.monotonic()
        try:
            address, redis_url = stack.enter_context(
                running(name, tree.root, settings.cpus, {**tree.fleet_env, **settings.fleet_env},
                        runs / name, {"denoiser": settings.cpus, **settings.fleet_replicas},
                        baseline_lora_cache=settings.baseline_lora_cache))
        except Exception as error:  # noqa: BLE001 - a system that cannot start is reported
            reports[name] = SystemReport(name, error=f"{type(error).__name__}: {error}")
            print(f"[{name}] did not start: {reports[name].error}", flush=True)
            continue
        targets[name] = Target(name, address, redis_url, time.monotonic() - t0)
        reports[name] = SystemReport(name, start_s=targets[name].start_s)
        print(f"[{name}] serving at {address} after {targets[name].start_s:.1f} s", flush=True)
    return targets


def run(settings: ServingSettings) -> dict[str, Any]:
    started = time.monotonic()
    load_before = os.getloadavg()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:settings.cpus])
    settings.out.mkdir(parents=True, exist_ok=True)
    tree = preset_tree(settings.preset, settings.models_out, settings.size, settings.steps,
                       settings.loras)
    work = tree.work
    runs = settings.out / "serving"
    reports: dict[str, SystemReport] = {}
    plan: Plan | None = None
    with contextlib.ExitStack() as stack:
        targets = start_systems(stack, settings, tree, runs, reports)
        if "baseline" in targets:
            for name, target in list(targets.items()):
                try:
                    reports[name].solo_s = solo_latencies(target.address, work,
                                                          settings.solo_repeats)
                except Exception as error:  # noqa: BLE001 - reported, the other system goes on
                    reports[name].error = f"{type(error).__name__}: {error}"
                    del targets[name]
                    continue
                print(f"[{name}] alone: " + ", ".join(
                    f"{w} {t:.3f}s" for w, t in reports[name].solo_s.items()), flush=True)
        if "baseline" in targets:
            plan = calibrate(settings, work, reports["baseline"].solo_s)
            slos = {w: round(t, 3) for w, t in plan.spec.workload.slos.items()}
            print(f"SLOs (s) {json.dumps(slos)}; capacity estimate {plan.capacity:.3g} req/s; "
                  f"rates {plan.rates}", flush=True)
            sweep(targets, reports, plan, settings, runs)
            fixed_and_bursts(targets, reports, plan, settings, runs)
    return write_outputs(settings, reports, plan, load_before, started)


def write_outputs(settings: ServingSettings, reports: dict[str, SystemReport], plan: Plan | None,
                  load_before: tuple[float, float, float], started: float) -> dict[str, Any]:
    fixed_rate = plan.fixed_rate if plan else 0.0
    rows = ratio_rows(reports["baseline"], reports["fleet"], TARGET, fixed_rate)
    print()
    print(format_table(rows))
    for name, report in reports.items():
        if report.error:
            print(f"{name}: {report.error}")
    doc = {
        "settings": {**asdict(settings), "out": str(settings.out)},
        # other work on the machine skews every number; the load averages say how much
        "machine": {"cpus_used": settings.cpus, "cpu_count": os.cpu_count(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "slos_s": plan.spec.workload.slos if plan else {},
        "capacity_estimate": plan.capacity if plan else None,
        "rates": plan.rates if plan else [], "fixed_rate": fixed_rate,
        "burst_base_rate": plan.burst_base_rate if plan else None, "target": TARGET,
        "systems": {n: r.to_dict(TARGET) for n, r in reports.items()},
        "table": [dict(zip(("metric", "baseline", "fleet", "ratio"), r, strict=True))
                  for r in rows],
        "elapsed_s": time.monotonic() - started,
    }
    (settings.out / "serving.json").write_text(json.dumps(doc, indent=1, default=str))
    write_sweep_plot(list(reports.values()), TARGET, settings.out / "serving_sweep.png")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"(1 min; {settings.cpus} CPUs used)")
    print(f"wrote {settings.out}/serving.json, serving_sweep.png and runs under "
          f"{settings.out}/serving/ in {doc['elapsed_s']:.0f} s")
    return doc


def run_suite(settings: ServingSettings) -> dict[str, Any]:
    """``repeats`` runs of each preset; prints and writes each preset's spread."""
    summary: dict[str, Any] = {}
    for preset in settings.presets:
        docs = []
        for r in range(settings.repeats):
            print(f"== preset {preset}, run {r + 1} of {settings.repeats}", flush=True)
            docs.append(run(replace(settings, preset=preset, seed=settings.seed + r,
                                    out=settings.out / preset / f"run_{r}",
                                    models_out=settings.out)))
        rows = spread_rows(docs)
        print(f"\n{preset}: median [min-max] over {len(docs)} runs")
        print(format_table(rows))
        write_spread_plot(docs, settings.out / preset / "serving_spread.png")
        summary[preset] = {"runs": [str(settings.out / preset / f"run_{r}" / "serving.json")
                                    for r in range(len(docs))],
                           "table": [dict(zip(("metric", "baseline", "fleet", "ratio"), row,
                                              strict=True)) for row in rows]}
    (settings.out / "serving_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {settings.out}/serving_summary.json")
    return summary


QUICK = {"presets": ("tiny", "sdxl-shaped"), "size": 64, "steps": 4, "loras": 4,
         "repeats": 2, "duration_s": 5.0, "rate_factors": (0.5, 1.0),
         "burst_duration_s": 5.0, "burst_off_s": 2.0, "burst_on_s": 1.0, "solo_repeats": 1,
         "sweep_budget_s": 40.0}


def parse_settings(argv: list[str] | None = None) -> ServingSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny and sdxl-shaped presets, short runs, 2 repeats: checks the "
                             "pipeline of the benchmark in a few minutes")
    parser.add_argument("--presets", nargs="+", choices=PRESETS,
                        help="model presets to run, one after the other (default: small "
                             "sdxl-shaped)")
    parser.add_argument("--repeats", type=int, help="whole runs per preset (default 3)")
    parser.add_argument("--size", type=int, help="image side in pixels (default 128)")
    parser.add_argument("--steps", type=int, help="denoising steps per request (default 10)")
    parser.add_argument("--loras", type=int, help="LoRA files of the sdxl-shaped tree")
    parser.add_argument("--baseline-lora-cache", type=int,
                        help="LoRAs each baseline worker keeps loaded (default 4; 0 = loaded "
                             "per request)")
    parser.add_argument("--cpus", type=int, help="CPUs both systems share (default: all)")
    parser.add_argument("--seed", type=int, help="seed of the first run's trace")
    parser.add_argument("--duration", type=float, dest="duration_s",
                        help="seconds of arrivals per sweep point")
    parser.add_argument("--slo-scale", type=float,
                        help="SLO as a multiple of the baseline's latency alone")
    parser.add_argument("--systems", help="comma-separated: baseline,fleet")
    parser.add_argument("--fleet-env", action="append", default=[],
                        help="KEY=VALUE for every fleet process (repeatable)")
    parser.add_argument("--fleet-replicas", action="append", default=[],
                        help="ROLE=N fleet processes of a role (repeatable)")
    parser.add_argument("--out", type=Path, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    for key in ("size", "steps", "loras", "baseline_lora_cache", "cpus", "seed", "duration_s",
                "slo_scale", "out", "repeats"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.presets:
        values["presets"] = tuple(args.presets)
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
    if args.fleet_replicas:
        replicas = dict(ServingSettings().fleet_replicas)
        for item in args.fleet_replicas:
            role, sep, count = item.partition("=")
            if not sep or not count.isdigit() or int(count) < 1:
                parser.error(f"--fleet-replicas {item!r} is not ROLE=N with N >= 1")
            replicas[role] = int(count)
        values["fleet_replicas"] = replicas
    settings = ServingSettings(**values)
    available = len(os.sched_getaffinity(0))
    if not 1 <= settings.cpus <= available:
        parser.error(f"--cpus {settings.cpus} must be in [1, {available}]")
    if settings.size % 8 or settings.steps < 1:
        parser.error("--size must be a multiple of 8 and --steps >= 1")
    if settings.repeats < 1 or settings.loras < 1 or settings.baseline_lora_cache < 0:
        parser.error("--repeats and --loras must be >= 1, --baseline-lora-cache >= 0")
    return settings


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    run_suite(parse_settings(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
