"""Time to the first denoising step with BAL against loading the LoRA first (load-then-run).

A local fleet on the small model serves requests with a LoRA that no tier of
the LoRA cache holds yet (each run names a fresh copy of the file): with
``lora_async_steps = 0`` the denoiser waits for the LoRA before step 0
(storage -> host shared memory -> parse onto the device); with BAL (K > 0) it
starts at once and merges the LoRA in when it is ready. The time to the first
step is measured from the SDK call to its first progress event; also the
whole request, the step the LoRA joined at, and a request without a LoRA and
one whose LoRA is already cached, for reference. Median of N after a warm-up.

    python bench/bal.py [--runs 5] [--steps 20] [--rank 64] [--k 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dfleet  # noqa: E402
from dfleet.local_fleet import LocalFleet  # noqa: E402
from services.common.tiny_model import write_tiny_model  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
           "ff.net.2", "conv1", "conv2"]


def write_lora(unet_dir: Path, path: Path, rank: int, seed: int) -> int:
    """A rank-``rank`` LoRA over the attention, feed-forward and resnet convolutions."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                        target_modules=TARGETS)
    unet.add_adapter(config)
    layers = {k: v * 0.1 for k, v in get_peft_model_state_dict(unet).items()}
    StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=layers, weight_name=path.name, safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict())
    return path.stat().st_size


def bench_models(source: Path, root: Path, rank: int, copies: int) -> tuple[Path, int]:
    """``root``: the small model tree (linked) plus ``copies`` names of one fresh LoRA."""
    if not (source / "tree.json").exists():
        write_tiny_model(source, seed=0, preset="small")
    root.mkdir(parents=True, exist_ok=True)
    for entry in ("tiny-sd", "tiny-sd-inpainting", "controlnets"):
        link = root / entry
        if not link.exists():
            link.symlink_to((source / entry).resolve())
    loras = root / "loras"
    first = loras / f"bench-lora-r{rank}-0.safetensors"
    if not first.exists():
        loras.mkdir(exist_ok=True)
        write_lora(source / "tiny-sd" / "unet", first, rank, seed=5)
    for i in range(1, copies):
        copy = loras / f"bench-lora-r{rank}-{i}.safetensors"
        if not copy.exists():
            shutil.copyfile(first, copy)
    return root, first.stat().st_size


def first_step(client: dfleet.Client, lora: str | None, k: int, steps: int, seed: int
               ) -> dict[str, float]:
    start = time.perf_counter()
    first = None
    loras = [dfleet.Lora(lora, 1.0)] if lora else []
    for event in client.stream("a portrait in a garden", seed=seed, steps=steps, loras=loras,
                               approximations=dfleet.Approximations(lora_async_steps=k)):
        if isinstance(event, dfleet.Progress) and first is None:
            first = time.perf_counter()
        if isinstance(event, dfleet.Result):
            end = time.perf_counter()
            assert first is not None
            return {"first_step_ms": (first - start) * 1e3, "total_ms": (end - start) * 1e3,
                    "joined": float(event.metadata.get("lora_joined_step", -1))}
    raise RuntimeError("no result")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--k", type=int, default=5, help="BAL bound for the BAL rows")
    parser.add_argument("--models", default="bench/results/models-small")
    parser.add_argument("--out", default="bench/results/bal.json")
    args = parser.parse_args()
    per_mode = args.runs + 1
    root, lora_bytes = bench_models(Path(args.models), Path(f"{args.models}-bal"), args.rank,
                                    2 * per_mode)
    names: list[str | None] = [f"bench-lora-r{args.rank}-{i}" for i in range(2 * per_mode)]
    cases: list[tuple[str, list[str | None], int]] = [
        ("no LoRA", [None] * per_mode, 0),
        ("load-then-run (K=0), cold LoRA", names[:per_mode], 0),
        (f"BAL (K={args.k}), cold LoRA", names[per_mode:], args.k),
        ("LoRA already cached (K=0)", [names[0]] * per_mode, 0),
    ]
    rows: list[dict[str, Any]] = []
    with LocalFleet(str(root)) as fleet, dfleet.Client(fleet.gateway_address,
                                                       timeout=600) as client:
        first_step(client, None, 0, args.steps, 99)  # every service's first request
        results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in cases}
        for run in range(per_mode):  # cases interleaved, so background load hits them alike
            for label, loras, k in cases:
                results[label].append(first_step(client, loras[run], k, args.steps, run))
        for label, _, _ in cases:
            runs = results[label][1:]
            rows.append(dict(case=label, **{key: round(statistics.median(r[key] for r in runs), 1)
                                            for key in runs[0]},
                             first_step_runs_ms=[round(r["first_step_ms"], 1) for r in runs]))
    print(f"\ntime to first step, small model 256x256, {args.steps} steps, rank-{args.rank} LoRA "
          f"({lora_bytes / 1e6:.1f} MB), median of {args.runs}, {os.cpu_count()} CPUs")
    print(f"{'case':<34}{'first step ms':>15}{'request ms':>12}{'joined at':>11}")
    for r in rows:
        print(f"{r['case']:<34}{r['first_step_ms']:>15}{r['total_ms']:>12}{r['joined']:>11}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), cpus=os.cpu_count(),
                                   steps=args.steps, rank=args.rank, lora_bytes=lora_bytes,
                                   runs=args.runs, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
