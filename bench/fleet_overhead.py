"""Fleet latency over in-process diffusers latency, for txt2img and ControlNet workflows.

Runs on the "small" generated model (128x128, a UNet step of tens of ms on a
2-core CPU), and for ``sdxl_txt2img`` / ``flux_txt2img`` on the tree's tiny SDXL and
Flux-dev models (both sides with classifier-free guidance for SD1.5 and SDXL, none for
Flux): each workflow 1 warm-up + N timed runs through plain diffusers
pipelines in this process and through a local fleet (every service a process,
tensors by shared memory, seen from the SDK), alternating one run of each so
that drift in a shared machine's speed falls on both. Prints a table of
medians and writes JSON. Goal: fleet / diffusers <= 1.10.

The ControlNet workflow's steps go through the shared-memory step ring (the
default); ``controlnet_grpc`` runs the same workflow on a second fleet whose
ControlNet refuses rings (``DFLEET_STEP_RING=false``), so every step is a gRPC
message as before the ring: name both to compare the two paths in one run.

    python bench/fleet_overhead.py [--runs 5] [--steps 20]
        [--workflows txt2img controlnet controlnet_grpc sdxl_txt2img flux_txt2img]
        [--out bench/results/fleet_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import dfleet  # noqa: E402
from dfleet.local_fleet import LocalFleet  # noqa: E402
from services.common.tiny_model import write_tiny_model  # noqa: E402
from tests.diffusers_reference import LOAD, sample_image  # noqa: E402

WORKFLOWS = ("txt2img", "controlnet", "controlnet_grpc", "sdxl_txt2img", "flux_txt2img")
DEFAULT_WORKFLOWS = ("txt2img", "controlnet", "sdxl_txt2img", "flux_txt2img")
# the model of each family's rows (the tree's SDXL and Flux models keep their tiny widths
# whatever the preset)
FAMILY_MODELS = {"sdxl_txt2img": "tiny-sdxl", "flux_txt2img": "tiny-flux-dev"}
# The fleet environment per workflow; the gRPC-path fleet's ControlNet refuses step rings.
FLEET_ENV = {"controlnet_grpc": {"DFLEET_STEP_RING": "false"}}
T = TypeVar("T")


def ensure_model(root: Path) -> Path:
    """The tree under ``root``, (re)written when it is missing or predates a family's models."""
    if not (root / "tree.json").exists() or not all(
            (root / name / "model_index.json").is_file() for name in FAMILY_MODELS.values()):
        write_tiny_model(root, seed=0, preset="small")
    return root


def diffusers_pipeline(models: Path, workflow: str, steps: int, size: int
                       ) -> Callable[[int], object]:
    """One plain diffusers call of ``workflow`` per seed, in this process."""
    import diffusers

    base = models / "tiny-sd"
    kwargs = dict(prompt="a lighthouse at dusk", num_inference_steps=steps, height=size,
                  width=size, output_type="np")
    if workflow in FAMILY_MODELS:
        index = json.loads((models / FAMILY_MODELS[workflow] / "model_index.json").read_text())
        pipe = getattr(diffusers, index["_class_name"]).from_pretrained(
            models / FAMILY_MODELS[workflow], local_files_only=True)
    elif workflow.startswith("controlnet"):
        net = diffusers.ControlNetModel.from_pretrained(models / "controlnets" / "tiny-cn-a",
                                                        local_files_only=True)
        pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(base, controlnet=net,
                                                                           **LOAD)
        kwargs["image"] = sample_image(7, size)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(base, **LOAD)
    pipe.set_progress_bar_config(disable=True)

    def call(seed: int) -> object:
        with torch.no_grad():
            return pipe(generator=torch.Generator().manual_seed(seed), **kwargs)
    return call


def fleet_call(client: dfleet.Client, workflow: str, steps: int, size: int
               ) -> Callable[[int], dfleet.Result]:
    """One request of ``workflow`` per seed through the fleet, seen from the SDK."""
    params: dict[str, object] = dict(steps=steps, width=size, height=size)
    if workflow in FAMILY_MODELS:
        params["model"] = FAMILY_MODELS[workflow]
    elif workflow.startswith("controlnet"):
        params["controlnets"] = [dfleet.ControlNet("tiny-cn-a", image=sample_image(7, size))]

    def call(seed: int) -> dfleet.Result:
        return client.generate("a lighthouse at dusk", seed=seed, **params)  # type: ignore[arg-type]
    return call


def timed(call: Callable[[int], T], seed: int) -> tuple[float, T]:
    start = time.perf_counter()
    out = call(seed)
    return (time.perf_counter() - start) * 1e3, out


def measure(plain: Callable[[int], object], fleet: Callable[[int], dfleet.Result],
            runs: int) -> tuple[list[float], list[float], list[dict[str, str]]]:
    """Alternates the two (after one warm-up each), so drift in the machine's speed
    falls on both alike."""
    plain(0)
    fleet(0)
    plain_ms, fleet_ms, metas = [], [], []
    for i in range(1, runs + 1):
        plain_ms.append(timed(plain, i)[0])
        ms, result = timed(fleet, i)
        fleet_ms.append(ms)
        metas.append(result.metadata)
    return plain_ms, fleet_ms, metas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per workflow")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--models", default="bench/results/models-small",
                        help="model tree (written with the small preset when missing)")
    parser.add_argument("--workflows", nargs="+", choices=WORKFLOWS,
                        default=list(DEFAULT_WORKFLOWS),
                        help="controlnet_grpc: the ControlNet workflow without step rings")
    parser.add_argument("--out", default="bench/results/fleet_overhead.json",
                        help="JSON results file")
    args = parser.parse_args()
    models = ensure_model(Path(args.models))
    rows = []
    plain = {w: diffusers_pipeline(models, w, args.steps, args.size) for w in args.workflows}
    with ExitStack() as stack:
        clients: dict[str, dfleet.Client] = {}
        for env in {json.dumps(FLEET_ENV.get(w, {})) for w in args.workflows}:
            fleet = stack.enter_context(LocalFleet(str(models), env=json.loads(env)))
            clients[env] = stack.enter_context(dfleet.Client(fleet.gateway_address,
                                                             timeout=600))
        for workflow in args.workflows:
            client = clients[json.dumps(FLEET_ENV.get(workflow, {}))]
            d_runs, f_runs, metas = measure(plain[workflow],
                                            fleet_call(client, workflow, args.steps, args.size),
                                            args.runs)
            d, f = statistics.median(d_runs), statistics.median(f_runs)
            steps_run = int(metas[0]["steps"])
            rows.append(dict(workflow=workflow, diffusers_ms=round(d, 1), fleet_ms=round(f, 1),
                             ratio=round(f / d, 3),
                             paired_ratio=round(statistics.median(
                                 fr / dr for fr, dr in zip(f_runs, d_runs, strict=True)), 3),
                             diffusers_step_ms=round(d / steps_run, 1),
                             fleet_denoise_ms=round(statistics.median(
                                 float(m["denoise_run_ms"]) for m in metas), 1),
                             fleet_controlnet_wait_ms=round(statistics.median(
                                 float(m.get("denoise_controlnet_wait_ms", 0)) for m in metas), 1),
                             diffusers_runs_ms=[round(t, 1) for t in d_runs],
                             fleet_runs_ms=[round(t, 1) for t in f_runs]))
    print(f"\nfleet vs in-process diffusers, {args.size}x{args.size}, {args.steps} steps, "
          f"median of {args.runs}, {os.cpu_count()} CPUs")
    print(f"{'workflow':<16}{'diffusers ms':>14}{'fleet ms':>10}{'ratio':>8}{'paired':>8}"
          f"{'step ms':>9}{'ControlNet wait ms':>20}")
    for r in rows:
        print(f"{r['workflow']:<16}{r['diffusers_ms']:>14}{r['fleet_ms']:>10}{r['ratio']:>8}"
              f"{r['paired_ratio']:>8}{r['diffusers_step_ms']:>9}"
              f"{r['fleet_controlnet_wait_ms']:>20}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), machine=platform.machine(),
                                   cpus=os.cpu_count(), steps=args.steps, size=args.size,
                                   runs=args.runs, goal_ratio=1.10, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
