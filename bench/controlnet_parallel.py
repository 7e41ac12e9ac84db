"""Denoiser step latency with ControlNets run serially, in parallel with the UNet, and stale.

Serial: the denoiser waits for the ControlNet residuals, then runs the whole
UNet. Parallel (the default): the UNet's down and mid blocks run while the
ControlNet replicas compute; only the up blocks wait. Stale: step t uses step
t-1's residuals, so nothing waits for the ControlNet. Each mode runs a local
fleet on the small model (every service a process, two ControlNet replicas, so
two ControlNets of a request run on two replicas) with ``--torch-threads``
threads per service; the step latency is the denoiser's run time over its steps
(from the result metadata), median of N runs after one warm-up.

    python bench/controlnet_parallel.py [--runs 5] [--steps 20] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dfleet  # noqa: E402
from dfleet.local_fleet import LocalFleet  # noqa: E402
from services.common.tiny_model import write_tiny_model  # noqa: E402
from tests.diffusers_reference import sample_image  # noqa: E402

CONTROLNETS = ("tiny-cn-a", "tiny-cn-b")


def ensure_models(root: Path) -> Path:
    if not (root / "tree.json").exists():
        write_tiny_model(root, seed=0, preset="small")
    return root


def step_ms(client: dfleet.Client, count: int, stale: bool, runs: int, steps: int,
            size: int) -> list[float]:
    nets = [dfleet.ControlNet(name, image=sample_image(7 + i, size))
            for i, name in enumerate(CONTROLNETS[:count])]
    approximations = dfleet.Approximations(stale_controlnet=stale)
    times = []
    for i in range(runs + 1):
        result = client.generate("a house by a lake", seed=i, steps=steps, width=size,
                                 height=size, controlnets=nets, approximations=approximations)
        times.append(float(result.metadata["denoise_run_ms"]) / int(result.metadata["steps"]))
    return times[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--models", default="bench/results/models-small")
    parser.add_argument("--out", default="bench/results/controlnet_parallel.json")
    args = parser.parse_args()
    models = ensure_models(Path(args.models))
    rows: list[dict[str, Any]] = []
    plan = {False: [(0, "none", False), (1, "serial", False), (2, "serial", False)],
            True: [(1, "parallel", False), (1, "stale", True), (2, "parallel", False),
                   (2, "stale", True)]}
    for parallel, cases in plan.items():
        env = {"DFLEET_PARALLEL_CONTROLNET": str(parallel).lower(),
               "DFLEET_TORCH_THREADS": str(args.torch_threads),
               "OMP_NUM_THREADS": str(args.torch_threads)}
        with LocalFleet(str(models), replicas={"controlnet": 2}, env=env) as fleet, \
                dfleet.Client(fleet.gateway_address, timeout=600) as client:
            for count, label, stale in cases:
                times = step_ms(client, count, stale, args.runs, args.steps, args.size)
                rows.append(dict(controlnets=count, mode=label,
                                 step_ms=round(statistics.median(times), 1),
                                 runs_ms=[round(t, 1) for t in times]))
    base = next(r["step_ms"] for r in rows if r["controlnets"] == 0)
    print(f"\ndenoiser step latency, small model {args.size}x{args.size}, {args.steps} steps, "
          f"{args.torch_threads} torch thread(s) per service, median of {args.runs}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'ControlNets':<13}{'mode':<10}{'step ms':>9}{'vs base':>9}")
    for r in sorted(rows, key=lambda r: (r["controlnets"], r["mode"])):
        r["vs_base"] = round(r["step_ms"] / base, 3)
        print(f"{r['controlnets']:<13}{r['mode']:<10}{r['step_ms']:>9}{r['vs_base']:>9}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), cpus=os.cpu_count(),
                                   torch_threads=args.torch_threads, steps=args.steps,
                                   size=args.size, runs=args.runs, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
