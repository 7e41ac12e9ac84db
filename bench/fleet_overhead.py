"""Fleet latency over in-process diffusers latency, for txt2img and ControlNet workflows.

Runs on the "small" generated model (128x128, a UNet step of tens of ms on a
2-core CPU): each workflow 1 warm-up + N timed runs through plain diffusers
pipelines in this process, then the same through a local fleet (every service a
process, tensors by shared memory), seen from the SDK. Prints a table of
medians and writes JSON. Goal: fleet / diffusers <= 1.10.

    python bench/fleet_overhead.py [--runs 5] [--steps 20] [--out bench/results/fleet_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import dfleet  # noqa: E402
from dfleet.local_fleet import LocalFleet  # noqa: E402
from services.common.tiny_model import write_tiny_model  # noqa: E402
from tests.diffusers_reference import LOAD, sample_image  # noqa: E402

WORKFLOWS = ("txt2img", "controlnet")


def ensure_model(root: Path) -> Path:
    if not (root / "tree.json").exists():
        write_tiny_model(root, seed=0, preset="small")
    return root


def diffusers_latency(models: Path, workflow: str, steps: int, runs: int, size: int) -> list[float]:
    import diffusers

    base = models / "tiny-sd"
    kwargs = dict(prompt="a lighthouse at dusk", num_inference_steps=steps, height=size,
                  width=size, output_type="np")
    if workflow == "controlnet":
        net = diffusers.ControlNetModel.from_pretrained(models / "controlnets" / "tiny-cn-a",
                                                        local_files_only=True)
        pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(base, controlnet=net,
                                                                           **LOAD)
        kwargs["image"] = sample_image(7, size)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(base, **LOAD)
    pipe.set_progress_bar_config(disable=True)
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        with torch.no_grad():
            pipe(generator=torch.Generator().manual_seed(i), **kwargs)
        times.append((time.perf_counter() - start) * 1e3)
    return times[1:]


def fleet_latency(client: dfleet.Client, workflow: str, steps: int, runs: int,
                  size: int) -> tuple[list[float], list[dict[str, str]]]:
    params: dict[str, object] = dict(steps=steps, width=size, height=size)
    if workflow == "controlnet":
        params["controlnets"] = [dfleet.ControlNet("tiny-cn-a", image=sample_image(7, size))]
    times, metas = [], []
    for i in range(runs + 1):
        start = time.perf_counter()
        result = client.generate("a lighthouse at dusk", seed=i, **params)  # type: ignore[arg-type]
        times.append((time.perf_counter() - start) * 1e3)
        metas.append(result.metadata)
    return times[1:], metas[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--models", default="bench/results/models-small")
    parser.add_argument("--out", default="bench/results/fleet_overhead.json")
    args = parser.parse_args()
    models = ensure_model(Path(args.models))
    rows = []
    plain = {w: diffusers_latency(models, w, args.steps, args.runs, args.size) for w in WORKFLOWS}
    with LocalFleet(str(models)) as fleet, dfleet.Client(fleet.gateway_address,
                                                         timeout=600) as client:
        for workflow in WORKFLOWS:
            times, metas = fleet_latency(client, workflow, args.steps, args.runs, args.size)
            d, f = statistics.median(plain[workflow]), statistics.median(times)
            steps_run = int(metas[0]["steps"])
            rows.append(dict(workflow=workflow, diffusers_ms=round(d, 1), fleet_ms=round(f, 1),
                             ratio=round(f / d, 3),
                             diffusers_step_ms=round(d / steps_run, 1),
                             fleet_denoise_ms=round(statistics.median(
                                 float(m["denoise_run_ms"]) for m in metas), 1),
                             diffusers_runs_ms=[round(t, 1) for t in plain[workflow]],
                             fleet_runs_ms=[round(t, 1) for t in times]))
    print(f"\nfleet vs in-process diffusers, {args.size}x{args.size}, {args.steps} steps, "
          f"median of {args.runs}, {os.cpu_count()} CPUs")
    print(f"{'workflow':<12}{'diffusers ms':>14}{'fleet ms':>10}{'ratio':>8}{'step ms':>9}")
    for r in rows:
        print(f"{r['workflow']:<12}{r['diffusers_ms']:>14}{r['fleet_ms']:>10}{r['ratio']:>8}"
              f"{r['diffusers_step_ms']:>9}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), machine=platform.machine(),
                                   cpus=os.cpu_count(), steps=args.steps, size=args.size,
                                   runs=args.runs, goal_ratio=1.10, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
