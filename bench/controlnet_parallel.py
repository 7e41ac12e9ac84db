"""Denoiser step latency with ControlNets run serially, in parallel with the UNet, and stale.

Serial: the denoiser waits for the ControlNet residuals, then runs the whole
UNet. Parallel (the default): the UNet's down and mid blocks run while the
ControlNet replicas compute; only the up blocks wait. Stale: step t uses step
t-1's residuals, so nothing waits for the ControlNet. Each mode runs a local
fleet on the small model (every service a process, two ControlNet replicas, so
two ControlNets of a request run on two replicas) with ``--torch-threads``
threads per service; the step latency is the denoiser's run time over its steps
(from the result metadata), and of it the time the step loop spent waiting for
residuals (what running beside the UNet hides); median of N runs after one
warm-up, the cases interleaved run by run.

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


def step_ms(client: dfleet.Client, count: int, stale: bool, seed: int, steps: int,
            size: int) -> tuple[float, float]:
    """One request's denoiser time per step, and of it the time spent waiting for residuals."""
    nets = [dfleet.ControlNet(name, image=sample_image(7 + i, size))
            for i, name in enumerate(CONTROLNETS[:count])]
    result = client.generate("a house by a lake", seed=seed, steps=steps, width=size,
                             height=size, controlnets=nets,
                             approximations=dfleet.Approximations(stale_controlnet=stale))
    steps_run = int(result.metadata["steps"])
    wait = float(result.metadata.get("denoise_controlnet_wait_ms", 0.0))
    return float(result.metadata["denoise_run_ms"]) / steps_run, wait / steps_run


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
    plan = {False: [(0, "none", False), (1, "serial 1", False), (2, "serial 2", False)],
            True: [(1, "parallel 1", False), (1, "stale 1", True), (2, "parallel 2", False),
                   (2, "stale 2", True)]}
    for parallel, cases in plan.items():
        env = {"DFLEET_PARALLEL_CONTROLNET": str(parallel).lower(),
               "DFLEET_TORCH_THREADS": str(args.torch_threads),
               "OMP_NUM_THREADS": str(args.torch_threads)}
        with LocalFleet(str(models), replicas={"controlnet": 2}, env=env) as fleet, \
                dfleet.Client(fleet.gateway_address, timeout=600) as client:
            for count, _, stale in cases:  # warm-up: every service's first request per case
                step_ms(client, count, stale, 99, args.steps, args.size)
            times: dict[str, list[tuple[float, float]]] = {label: [] for _, label, _ in cases}
            for run in range(args.runs):  # cases interleaved: background load hits them alike
                for count, label, stale in cases:
                    times[label].append(step_ms(client, count, stale, run, args.steps,
                                                args.size))
            for count, label, _ in cases:
                rows.append(dict(controlnets=count, mode=label.split()[0],
                                 step_ms=round(statistics.median(t for t, _ in times[label]), 1),
                                 wait_ms=round(statistics.median(w for _, w in times[label]), 1),
                                 runs_ms=[round(t, 1) for t, _ in times[label]]))
    base = next(r["step_ms"] for r in rows if r["controlnets"] == 0)
    print(f"\ndenoiser step latency, small model {args.size}x{args.size}, {args.steps} steps, "
          f"{args.torch_threads} torch thread(s) per service, median of {args.runs}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'ControlNets':<13}{'mode':<10}{'step ms':>9}{'vs base':>9}"
          f"{'waiting for residuals ms':>26}")
    for r in sorted(rows, key=lambda r: (r["controlnets"], r["mode"])):
        r["vs_base"] = round(r["step_ms"] / base, 3)
        print(f"{r['controlnets']:<13}{r['mode']:<10}{r['step_ms']:>9}{r['vs_base']:>9}"
              f"{r['wait_ms']:>26}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), cpus=os.cpu_count(),
                                   torch_threads=args.torch_threads, steps=args.steps,
                                   size=args.size, runs=args.runs, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
