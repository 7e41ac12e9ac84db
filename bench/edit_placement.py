"""Mask-aware placement of template edits vs round-robin (and least-requests), on one trace.

A local fleet on the "small" model with two denoiser replicas, each pinned
to its own CPU core with one torch thread (two single-core "GPUs"), sharing
one activation store. One template is registered with warm-up; then a
seeded open-loop trace of cached edits with a mix of small and large masks
(Poisson arrivals) is sent through one gateway per policy: all gateways
share the fleet and differ only in ``edit_placement``. Rounds alternate
between the policies so background load hits them alike. Reports p50 / p95
/ mean end-to-end latency per policy and writes JSON.

    python bench/edit_placement.py [--requests 24] [--rate 0.7] [--rounds 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

import dfleet  # noqa: E402
from dfleet.local_fleet import LocalFleet  # noqa: E402
from diffusion.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402
from services.common.fleet_state import FleetState, ReplicaInfo  # noqa: E402
from services.common.tiny_model import write_tiny_model  # noqa: E402
from services.gateway.edit_placement import EditCostModel, EditDemand, EditPlacer  # noqa: E402
from tests.diffusers_reference import sample_image  # noqa: E402
from tests.template_edit_loop import box_mask  # noqa: E402

SIZE = 256
POLICIES = ("mask_aware", "round_robin", "least_requests")


def trace(n: int, rate: float, seed: int, small: float, large: float,
          p_large: float, pattern: str = "random") -> list[tuple[float, float]]:
    """(arrival second, mask ratio) per request: masks drawn at random, or alternating
    large/small (a client interleaving two kinds of edits)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    ratios = np.where(rng.random(n) < p_large, large, small)
    if pattern == "alternating":
        ratios = np.where(np.arange(n) % 2 == 0, large, small)
    return [(float(a - arrivals[0]), float(r)) for a, r in zip(arrivals, ratios, strict=True)]


def register(address: str, steps: int) -> tuple[str, int]:
    out = io.BytesIO()
    sample_image(3, SIZE).save(out, format="PNG")
    with grpc.insecure_channel(address) as channel:
        reply = gateway_pb2_grpc.GatewayStub(channel).RegisterTemplate(
            gateway_pb2.RegisterTemplateRequest(
                model="tiny-sd-inpainting", image=gateway_pb2.ImageInput(data=out.getvalue()),
                prompt="a studio photo of a handbag", warm_up=True, seed=3,
                num_inference_steps=steps), timeout=600)
    return reply.template_id, reply.cache_bytes


def run_round(address: str, template_id: str, requests: list[tuple[float, float]]
              ) -> list[dict[str, object]]:
    masks = {r: box_mask(SIZE, r) for _, r in requests}
    results: list[dict[str, object]] = [{} for _ in requests]
    start = time.monotonic() + 0.5

    def one(i: int, at: float, ratio: float) -> None:
        time.sleep(max(0.0, start + at - time.monotonic()))
        sent = time.monotonic()
        with dfleet.Client(address, timeout=600) as client:
            result = client.generate("a red leather handbag", template_id=template_id,
                                     mask=masks[ratio], seed=0,
                                     approximations=dfleet.Approximations(activation_cache=True))
        results[i] = {"ratio": ratio, "latency_s": time.monotonic() - sent,
                      "denoiser": result.metadata.get("denoiser", ""),
                      "edit_mode": result.metadata.get("edit_mode", "")}

    threads = [threading.Thread(target=one, args=(i, at, r)) for i, (at, r) in
               enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def simulate(policy: str, requests: list[tuple[float, float]], costs: EditCostModel,
             steps: int, fleet: FleetState, noise: float, seed: int) -> list[float]:
    """Two replicas with step-level batching (a step costs the sum of its edits' step
    costs; edits join at step boundaries), placed by the real :class:`EditPlacer` and its
    Redis ledger. An edit's true step cost is the model's times a log-normal error."""
    rng = np.random.default_rng(seed)
    placer = EditPlacer(fleet, costs, policy)
    names = ("sim-a", "sim-b")
    # [id, arrival, steps left, true ms/step, predicted ms/step]
    running: dict[str, list[list[float]]] = {n: [] for n in names}
    joining: dict[str, list[list[float]]] = {n: [] for n in names}
    ends = {n: float("inf") for n in names}
    arrivals = sorted((at, i, ratio) for i, (at, ratio) in enumerate(requests))
    latencies: list[float] = []

    def next_step(name: str, now: float) -> None:
        running[name] += joining[name]
        joining[name] = []
        ends[name] = (now + sum(item[3] for item in running[name]) / 1e3
                      if running[name] else float("inf"))

    while arrivals or any(running.values()):
        name = min(names, key=lambda n: ends[n])
        if arrivals and arrivals[0][0] <= ends[name]:
            now, i, ratio = arrivals.pop(0)
            demand = EditDemand(ratio, True, steps, 10e6)
            replicas = [ReplicaInfo(n, "denoiser", n, "h", models=("m",),
                                    load=len(running[n]) + len(joining[n])) for n in names]
            predicted = costs.per_step_ms(demand)
            chosen = placer.reserve(replicas, "m", f"{policy}-{i}",
                                    predicted * steps).replica_id
            joining[chosen].append([i, now, steps, predicted * float(rng.lognormal(0, noise)),
                                    predicted])
            if not running[chosen]:
                next_step(chosen, now)
            continue
        now = ends[name]
        for item in list(running[name]):
            item[2] -= 1
            rid = f"{policy}-{int(item[0])}"
            if item[2] <= 0:
                running[name].remove(item)
                placer.ledger.remove(name, rid)
                latencies.append(now - item[1])
            else:
                placer.ledger.set(name, rid, item[4] * item[2])
        next_step(name, now)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50_s": float(np.percentile(ordered, 50)), "p95_s": float(np.percentile(ordered, 95)),
            "mean_s": statistics.fmean(ordered), "max_s": ordered[-1]}


def simulated(args: argparse.Namespace, policies: list[str]) -> dict[str, object]:
    """The same policies on long simulated traces at several loads (no background noise)."""
    from dfleet.local_fleet import start_redis

    costs = (EditCostModel.from_profile(args.profile) if Path(args.profile).exists()
             else EditCostModel())
    mix = [(args.small, 1 - args.p_large), (args.large, args.p_large)]
    mean_s = sum(p * costs.cost_ms(EditDemand(r, True, args.steps, 10e6)) for r, p in mix) / 1e3
    proc, url = start_redis(Path(tempfile.mkdtemp()) / "redis.log")
    table: dict[str, object] = {}
    try:
        print(f"\nsimulated: {args.sim_requests} edits per trace, 2 replicas, step cost from the "
              f"fitted profile x log-normal({args.sim_noise}) error")
        print("\n| load | placement | p50 s | p95 s | mean s |")
        print("|---|---|---|---|---|")
        for load in (0.6, 0.75, 0.9):
            requests = trace(args.sim_requests, load * 2 / mean_s, args.seed, args.small,
                             args.large, args.p_large)
            for policy in policies:
                fleet = FleetState.from_url(url, prefix=f"sim-{load}-{policy}:")
                stats = summary(simulate(policy, requests, costs, args.steps, fleet,
                                         args.sim_noise, args.seed))
                table[f"{load}/{policy}"] = stats
                print(f"| {load:.0%} | {policy} | {stats['p50_s']:.2f} | {stats['p95_s']:.2f} | "
                      f"{stats['mean_s']:.2f} |")
    finally:
        proc.terminate()
        proc.wait(10)
    return table


def fleet_rounds(args: argparse.Namespace, policies: list[str]) -> dict[str, object]:
    models = Path(args.models)
    if not (models / "tree.json").exists():
        write_tiny_model(models, seed=0, preset="small")
    env = {"DFLEET_TORCH_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "DFLEET_ACTIVATION_DIR": tempfile.mkdtemp(prefix="dfleet-act-"),
           "DFLEET_EDIT_PLACEMENT": policies[0]}
    if Path(args.profile).exists():
        env["DFLEET_EDIT_COST_PROFILE"] = str(Path(args.profile).resolve())
    requests = trace(args.requests, args.rate, args.seed, args.small, args.large, args.p_large,
                     args.pattern)
    runs: dict[str, list[dict[str, object]]] = {p: [] for p in policies}
    round_p95: dict[str, list[float]] = {p: [] for p in policies}
    fleet = LocalFleet(str(models), replicas={"denoiser": 2}, env=env, startup_timeout_s=300)
    with fleet:
        gateways = {policies[0]: fleet.gateway_address}
        for policy in policies[1:]:
            fleet.env["DFLEET_EDIT_PLACEMENT"] = policy
            service = fleet.spawn("gateway")
            fleet._wait_port(service)  # noqa: SLF001 - the bench adds gateways to a running fleet
            gateways[policy] = service.address
        denoisers = [s for s in fleet.services if s.role == "denoiser"]
        for core, service in enumerate(denoisers):
            os.sched_setaffinity(service.process.pid, {core % (os.cpu_count() or 1)})
        template_id, cache_bytes = register(fleet.gateway_address, args.steps)
        # Steady state: both replicas hold the model (one edit each, then a heartbeat).
        run_round(gateways.get("round_robin", fleet.gateway_address), template_id,
                  [(0.0, args.small), (0.0, args.small)])
        time.sleep(3.0)
        print(f"template {template_id}: {cache_bytes / 2**20:.1f} MiB recorded; "
              f"{len(requests)} edits per round, {dict(Counter(r for _, r in requests))} "
              "by mask ratio")
        for round_index in range(args.rounds):
            for policy in policies:
                done = run_round(gateways[policy], template_id, requests)
                runs[policy].extend(done)
                lat = [float(d["latency_s"]) for d in done]  # type: ignore[arg-type]
                round_p95[policy].append(float(np.percentile(lat, 95)))
                print(f"round {round_index} {policy}: p95 {round_p95[policy][-1]:.2f} s, "
                      f"mean {statistics.fmean(lat):.2f} s", flush=True)
    first = policies[0]
    for other in policies[1:]:
        wins = sum(a < b for a, b in zip(round_p95[first], round_p95[other], strict=True))
        print(f"{first} had the lower p95 in {wins} of {args.rounds} rounds against {other}")
    print("\n| placement | p50 s | p95 s | mean s | median of round p95s | edits per replica "
          "(large) |")
    print("|---|---|---|---|---|---|")
    table: dict[str, object] = {}
    for policy in policies:
        done = runs[policy]
        stats = summary([float(d["latency_s"]) for d in done])  # type: ignore[arg-type]
        per = Counter(str(d["denoiser"]) for d in done)
        large = Counter(str(d["denoiser"]) for d in done if d["ratio"] == args.large)
        split = " / ".join(f"{per[k]} ({large[k]})" for k in sorted(per))
        table[policy] = {**stats, "round_p95_s": round_p95[policy], "per_replica": dict(per),
                         "large_per_replica": dict(large)}
        print(f"| {policy} | {stats['p50_s']:.2f} | {stats['p95_s']:.2f} | {stats['mean_s']:.2f} "
              f"| {statistics.median(round_p95[policy]):.2f} | {split} |")
    return {"summary": table, "requests": runs, "cost_profile":
            env.get("DFLEET_EDIT_COST_PROFILE", "")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--rate", type=float, default=0.5, help="arrivals per second")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--small", type=float, default=0.05)
    parser.add_argument("--large", type=float, default=0.80)
    parser.add_argument("--p-large", type=float, default=0.4)
    parser.add_argument("--pattern", choices=("random", "alternating"), default="random")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--models", default="bench/results/models-small")
    parser.add_argument("--profile", default="bench/results/edit_cost_profile.json")
    parser.add_argument("--out", default="bench/results/edit_placement.json")
    parser.add_argument("--no-fleet", action="store_true", help="only the simulation")
    parser.add_argument("--sim-requests", type=int, default=400)
    parser.add_argument("--sim-noise", type=float, default=0.2)
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    result: dict[str, object] = {
        "date": date.today().isoformat(), "cpus": os.cpu_count(), "steps": args.steps,
        "requests_per_round": args.requests, "rounds": args.rounds, "rate": args.rate,
        "pattern": args.pattern,
        "mask_ratios": {"small": args.small, "large": args.large, "p_large": args.p_large}}
    if not args.no_fleet:
        result["fleet"] = fleet_rounds(args, policies)
    result["simulated"] = simulated(args, policies)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
