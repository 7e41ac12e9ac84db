"""Local autoscaling experiment: a real fleet on this machine, the LocalAutoscaler owning the
model nodes, and a load generator burst through the gateway.

    python deploy/local_autoscale_experiment.py --models-dir /tmp/dfm --out autoscale.json

Starts Redis, the gateway and the LoRA cache (``dfleet.local_fleet.LocalFleet``), lets the
autoscaler start one process per node (``default_local_settings``), runs
``loadgen run --arrival onoff`` against the gateway, and samples every two seconds the
queue depth, the processes the scaler runs per node and the replicas heartbeating in Redis,
until ``--after-s`` after the load ends. Prints the timeline (``processes/live`` per node)
as a table and writes it as JSON. Writes the tiny model into ``--models-dir`` first if the folder is empty.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import redis

from controller.local_scaler import LocalAutoscaler, default_local_settings
from dfleet.local_fleet import LocalFleet
from services.common.fleet_state import FleetState

AUTOSCALED = ("text_encoder", "denoiser", "vae", "controlnet")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", default="/tmp/dfm")
    p.add_argument("--state-dir", default="/tmp/dfleet-autoscale")
    p.add_argument("--rate", type=float, default=0.2, help="base req/s (onoff)")
    p.add_argument("--burst-factor", type=float, default=20)
    p.add_argument("--on-s", type=float, default=20)
    p.add_argument("--off-s", type=float, default=10)
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--after-s", type=float, default=40, help="keep sampling after the load")
    p.add_argument("--out", default="autoscale.json")
    return p.parse_args()


def print_table(rows: list[dict], nodes: list[tuple[str, str]]) -> None:  # type: ignore[type-arg]
    """One line per sample: max depth, then processes/live replicas per node."""
    print(f"{'t_s':>6} {'phase':6} {'depth':>5}  " + "  ".join(f"{n:>20}" for n, _ in nodes))
    for r in rows:
        depth = max(r["depth"].values(), default=0)
        cells = [f"{r['processes'][name]}/{r['live'][role]}" for name, role in nodes]
        print(f"{r['t']:>6} {r['phase']:6} {depth:>5}  " + "  ".join(f"{c:>20}" for c in cells))


def main() -> int:
    args = parse()
    models = Path(args.models_dir)
    if not models.exists() or not any(models.iterdir()):
        from services.common.tiny_model import write_tiny_model
        write_tiny_model(str(models))
    env = {"TRANSFORMERS_VERBOSITY": "error", "DFLEET_TORCH_THREADS": "1",
           "DFLEET_HEARTBEAT_S": "1"}
    settings = default_local_settings()
    fleet = LocalFleet(models_dir=str(models), state_dir=args.state_dir,
                       replicas={r: 0 for r in AUTOSCALED}, env=env).start()
    auto = LocalAutoscaler(settings, models, fleet.redis_url, env=env,
                           log_dir=Path(args.state_dir) / "autoscaled").start()
    state = FleetState(redis.Redis.from_url(fleet.redis_url))
    t0 = time.monotonic()
    rows: list[dict[str, object]] = []

    def sample(phase: str) -> None:
        rows.append({"t": round(time.monotonic() - t0, 1), "phase": phase,
                     "depth": state.depths(),
                     "processes": {n.name: len(auto.scaler.processes(n.name))
                                   for n in settings.nodes},
                     "live": {r: len(state.replicas(r)) for r in AUTOSCALED}})

    try:
        while any(len(state.replicas(r)) < 1 for r in AUTOSCALED):
            time.sleep(0.5)
        sample("ready")
        argv = [sys.executable, "-m", "loadgen", "run", "--target", fleet.gateway_address,
                "--arrival", "onoff", "--rate", str(args.rate),
                "--burst-factor", str(args.burst_factor), "--on-s", str(args.on_s),
                "--off-s", str(args.off_s), "--duration", str(args.duration),
                "--mix", "controlnet=1", "--slo", "60", "--timeout", "120",
                "--redis-url", fleet.redis_url, "--no-plots", "--quiet"]
        with open(Path(args.state_dir) / "loadgen.out", "w") as log:
            load = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            while load.poll() is None:
                sample("load")
                time.sleep(2)
        end = time.monotonic()
        while time.monotonic() - end < args.after_s:
            sample("after")
            time.sleep(2)
    finally:
        auto.stop()
        fleet.stop()
    print_table(rows, [(n.name, n.role) for n in settings.nodes])
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out}; loadgen report in {args.state_dir}/loadgen.out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
