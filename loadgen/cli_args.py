"""Command-line options of ``loadgen`` and their conversion into typed specs.

A bad value raises ``argparse.ArgumentTypeError`` (or reaches ``parser.error``),
so the command prints one clear line and exits with code 2.
"""

from __future__ import annotations

import argparse
import math

from loadgen.arrivals import PROCESSES, ArrivalSpec
from loadgen.runner import RunOptions
from loadgen.schedule import ScheduleSpec
from loadgen.trace import read_trace
from loadgen.workload import WORKFLOWS, WorkloadSpec


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def name_list(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def rate_list(text: str) -> list[float]:
    rates = [positive_float(part) for part in text.split(",") if part.strip()]
    if not rates:
        raise argparse.ArgumentTypeError("give at least one rate, e.g. 0.5,1,2")
    return rates


def mix(text: str) -> dict[str, float]:
    """``txt2img=3,lora=1``: relative weights of the workflows."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in WORKFLOWS:
            raise argparse.ArgumentTypeError(
                f"unknown workflow {name!r}; known: {', '.join(WORKFLOWS)}")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"weight {weight!r} of {name} is not a number") from None
        if not (math.isfinite(weights[name]) and weights[name] >= 0):
            raise argparse.ArgumentTypeError(f"weight of {name} must be >= 0")
    if not weights or sum(weights.values()) <= 0:
        raise argparse.ArgumentTypeError("the mix needs a workflow with a weight > 0")
    return weights


def slos(text: str) -> dict[str, float]:
    """``5`` (every workflow) or ``txt2img=2,edit=3`` (seconds)."""
    if "=" not in text:
        every = positive_float(text)
        return dict.fromkeys(WORKFLOWS, every)
    found: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, seconds = part.partition("=")
        if name not in WORKFLOWS:
            raise argparse.ArgumentTypeError(f"SLO for unknown workflow {name!r}")
        found[name] = positive_float(seconds)
    return found


def ratio_range(text: str) -> tuple[float, float]:
    """``0.25`` or ``0.1:0.4``: fractions in (0, 1]."""
    lo_text, _, hi_text = text.partition(":")
    lo = positive_float(lo_text)
    hi = positive_float(hi_text) if hi_text else lo
    if not lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must satisfy 0 < lo <= hi <= 1")
    return lo, hi


def add_schedule_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("schedule (fixed entirely by --seed)")
    g.add_argument("--arrival", choices=PROCESSES, default="poisson",
                   help="arrival process of the requests")
    g.add_argument("--rate", type=positive_float, default=1.0, help="mean requests per second")
    g.add_argument("--cv", type=positive_float, default=2.0, help="gamma: CV of the gaps")
    g.add_argument("--burst-factor", type=positive_float, default=4.0,
                   help="onoff: burst rate over the base rate")
    g.add_argument("--on-s", type=positive_float, default=2.0, help="onoff: burst length, seconds")
    g.add_argument("--off-s", type=positive_float, default=8.0,
                   help="onoff: seconds between bursts")
    g.add_argument("--trace", help="CSV trace to replay (columns time_s[,workflow][,lora])")
    g.add_argument("--time-scale", type=positive_float, default=1.0,
                   help="trace: replay speed-up")
    g.add_argument("--count", type=positive_int,
                   help="at most this many requests (default: no limit)")
    g.add_argument("--duration", type=positive_float,
                   help="no arrival after this many seconds (default: no limit)")
    g.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of arrivals, workflows, LoRAs and payloads")
    w = parser.add_argument_group("workload")
    w.add_argument("--mix", type=mix, default={"txt2img": 1.0},
                   help=f"weights, e.g. txt2img=3,lora=1 (workflows: {', '.join(WORKFLOWS)})")
    w.add_argument("--slo", type=slos, default={},
                   help="seconds: 5, or txt2img=2,edit=3 (default: no SLO)")
    w.add_argument("--model", default="tiny-sd", help="model of text-to-image and LoRA requests")
    w.add_argument("--edit-model", default="",
                   help="model of edit requests (empty: an inpainting model the gateway lists)")
    w.add_argument("--width", type=non_negative_int, default=0, help="0 = model default")
    w.add_argument("--height", type=non_negative_int, default=0, help="0 = model default")
    w.add_argument("--steps", type=positive_int, default=20, help="denoising steps per request")
    w.add_argument("--guidance", type=float, default=7.5, help="guidance scale per request")
    w.add_argument("--loras", type=name_list, default=("tiny-lora-r4", "tiny-lora-r8"),
                   help="comma-separated LoRAs the lora workflow draws from")
    w.add_argument("--lora-popularity", default="zipf:1.0", help="uniform or zipf:S")
    w.add_argument("--lora-scale", type=float, default=0.8, help="scale of each drawn LoRA")
    w.add_argument("--controlnets", type=name_list, default=("tiny-cn-a",),
                   help="comma-separated ControlNets the controlnet workflow draws from")
    w.add_argument("--controlnet-scale", type=float, default=1.0,
                   help="conditioning scale of each ControlNet")
    w.add_argument("--mask-ratio", type=ratio_range, default=(0.1, 0.4),
                   help="edit: masked fraction, 0.25 or 0.1:0.4")
    w.add_argument("--strength", type=positive_float, default=0.6, help="img2img strength")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--target", "--address", dest="target", required=True,
                   help="gateway address host:port")
    g.add_argument("--concurrency", type=non_negative_int, default=0,
                   help="requests in flight at most (0 = no cap)")
    g.add_argument("--timeout", type=positive_float, default=60.0, help="deadline per request (s)")
    g.add_argument("--redis-url", default="", help="sample queue depth per model from this Redis")
    g.add_argument("--depth-interval", type=positive_float, default=0.5,
                   help="seconds between queue-depth samples (with --redis-url)")
    g.add_argument("--out", help="folder for requests.jsonl, summary.json and plots "
                   "(default: print the summary only)")
    g.add_argument("--no-plots", action="store_true",
                   help="with --out: write no PNG plots (they need matplotlib)")
    g.add_argument("--quiet", action="store_true", help="no progress line")


def schedule_spec(args: argparse.Namespace) -> ScheduleSpec:
    """The spec the options describe; ValueError names a bad combination."""
    trace = read_trace(args.trace) if args.trace else ()
    if args.trace and args.arrival not in ("poisson", "trace"):
        raise ValueError(f"--trace replays its own times; it cannot be combined with "
                         f"--arrival {args.arrival}")
    process = "trace" if args.trace else args.arrival
    if process == "trace" and not trace:
        raise ValueError("--arrival trace needs --trace FILE")
    arrivals = ArrivalSpec(process=process, rate=args.rate, cv=args.cv,
                           burst_factor=args.burst_factor, on_s=args.on_s, off_s=args.off_s,
                           trace_times=tuple(r.time_s for r in trace), time_scale=args.time_scale)
    workload = WorkloadSpec(
        mix=args.mix, slos=args.slo, model=args.model, edit_model=args.edit_model,
        width=args.width, height=args.height, steps=args.steps, guidance=args.guidance,
        loras=args.loras, lora_popularity=args.lora_popularity, lora_scale=args.lora_scale,
        controlnets=args.controlnets, controlnet_scale=args.controlnet_scale,
        mask_ratio=args.mask_ratio, strength=args.strength)
    spec = ScheduleSpec(arrivals=arrivals, workload=workload, seed=args.seed, count=args.count,
                        duration=args.duration, trace=trace)
    spec.check()
    return spec


def run_options(args: argparse.Namespace, label: str = "loadgen") -> RunOptions:
    return RunOptions(address=args.target, concurrency=args.concurrency, timeout_s=args.timeout,
                      redis_url=args.redis_url, depth_interval_s=args.depth_interval,
                      progress=not args.quiet, label=label)
