"""``loadgen``: load tests of a diffusion fleet (or anything speaking its Gateway API).

    loadgen schedule --rate 2 --duration 10 --mix txt2img=3,lora=1      # print the schedule
    loadgen run --target 127.0.0.1:50051 --rate 2 --duration 30 --slo 3 --out results/
    loadgen sweep --target 127.0.0.1:50051 --rates 0.5,1,2,4 --duration 20 --slo 3

Exit codes: 0 done, 1 the gateway could not be reached, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from dfleet.help_format import HelpFormatter
from loadgen.cli_args import (
    add_run_options,
    add_schedule_options,
    rate_list,
    run_options,
    schedule_spec,
)
from loadgen.records import write_records
from loadgen.runner import GatewayUnreachable, run_load
from loadgen.schedule import build_schedule
from loadgen.summary import format_summary, summarize
from loadgen.sweep import SweepPoint, format_sweep, run_sweep, sustainable_rate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadgen", description=__doc__,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    schedule = sub.add_parser("schedule", help="print the schedule as JSON lines",
                              formatter_class=HelpFormatter)
    run = sub.add_parser("run", help="send one schedule and report",
                         formatter_class=HelpFormatter)
    sweep = sub.add_parser("sweep", help="run the schedule at several rates",
                           formatter_class=HelpFormatter)
    for command in (schedule, run, sweep):
        command.set_defaults(command_parser=command)
        add_schedule_options(command)
    for command in (run, sweep):
        add_run_options(command)
    sweep.add_argument("--rates", type=rate_list, required=True,
                       help="comma-separated req/s (for a trace: replay speed-ups)")
    sweep.add_argument("--attainment-target", type=float, default=0.9,
                       help="fraction of requests within their SLO a rate must reach")
    sweep.add_argument("--stop-below", type=float, default=0.5,
                       help="skip higher rates once attainment falls under this (0 = never)")
    sweep.add_argument("--cooldown", type=float, default=1.0, help="seconds between rates")
    return parser


def _out_dir(args: argparse.Namespace) -> Path | None:
    if not args.out:
        return None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_schedule(args: argparse.Namespace) -> int:
    for req in build_schedule(schedule_spec(args)):
        print(req.to_json())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    spec = schedule_spec(args)
    result = run_load(build_schedule(spec), spec.workload, run_options(args))
    summary = summarize(result.records, result.wall_s)
    print(format_summary(summary))
    out = _out_dir(args)
    if out is not None:
        write_records(out / "requests.jsonl", result.records)
        (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1))
        if result.depth:
            (out / "queue_depth.json").write_text(json.dumps([asdict(s) for s in result.depth]))
        if not args.no_plots:
            from loadgen.plots import write_run_plots

            write_run_plots(result.records, result.depth, out)
        print(f"wrote {out}/")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if not 0 < args.attainment_target <= 1 or not 0 <= args.stop_below <= 1:
        raise ValueError("--attainment-target must be in (0, 1] and --stop-below in [0, 1]")
    spec = schedule_spec(args)
    out = _out_dir(args)

    def report(point: SweepPoint) -> None:
        if point.summary is not None:
            print(f"rate {point.rate:g}/s: attainment {point.summary.attainment:.1%}", flush=True)
            if out is not None and point.result is not None:
                write_records(out / f"requests_rate{point.rate:g}.jsonl", point.result.records)

    points = run_sweep(spec, args.rates, run_options(args), stop_below=args.stop_below or None,
                       cooldown_s=args.cooldown, on_point=report)
    print(format_sweep(points, args.attainment_target))
    if out is not None:
        data = {"target": args.attainment_target,
                "sustainable_rate": sustainable_rate(points, args.attainment_target),
                "points": [{"rate": p.rate,
                            "summary": p.summary.to_dict() if p.summary else None}
                           for p in points]}
        (out / "sweep.json").write_text(json.dumps(data, indent=1))
        if not args.no_plots:
            from loadgen.plots import plot_sweep

            plot_sweep({args.target: [(p.rate, p.summary.attainment) for p in points
                                      if p.summary is not None]},
                       args.attainment_target, out / "sweep.png")
        print(f"wrote {out}/")
    return 0


COMMANDS = {"schedule": cmd_schedule, "run": cmd_run, "sweep": cmd_sweep}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as error:
        args.command_parser.error(str(error))  # exits with code 2
    except GatewayUnreachable as error:
        print(f"loadgen: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
