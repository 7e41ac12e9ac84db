"""How faithful the production-shaped preset is: its cost ratios, next to an H200's at real size.

Plain diffusers in this process, one torch thread (as each serving process has),
the preset's default 128x128: the UNet step and the ControlNet step at batch 2
(classifier-free guidance), loading and unloading each kind of LoRA with
diffusers' own API, and whole pipelines of ``--steps`` steps (base, +ControlNet,
+ControlNet with a LoRA loaded for the request). Ratios are what carries over
from a loaded machine; the load average is printed with them.

    python bench/sdxl_shaped_ratios.py [--models bench/results/models-sdxl-shaped] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.sdxl_shaped import CONTROLNET, MODEL, write_sdxl_shaped  # noqa: E402

# One NVIDIA H200, fp16, SDXL at 1024x1024 with real weights' shapes, diffusers 0.42.1 eager.
H200_MS = {"unet_step": 80.0, "controlnet_step": 35.0, "lora_load": 2439.0}


def ensure_tree(root: Path) -> Path:
    tree = root / "tree.json"
    if not (tree.exists() and json.loads(tree.read_text()).get("preset") == "sdxl-shaped"):
        write_sdxl_shaped(root)
    return root


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(root: Path, runs: int, steps: int, size: int) -> dict[str, Any]:
    from diffusers import (
        ControlNetModel,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLPipeline,
    )
    from PIL import Image

    tree = json.loads((root / "tree.json").read_text())
    pipe = StableDiffusionXLPipeline.from_pretrained(root / MODEL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    controlnet = ControlNetModel.from_pretrained(root / "controlnets" / CONTROLNET,
                                                 local_files_only=True).eval()
    cn_pipe = StableDiffusionXLControlNetPipeline(**pipe.components, controlnet=controlnet)
    cn_pipe.set_progress_bar_config(disable=True)
    unet, side = pipe.unet, size // 8
    sample = torch.randn(2, 4, side, side)
    t = torch.tensor(500.0)
    embeds = torch.randn(2, 77, unet.config.cross_attention_dim)
    added = {"text_embeds": torch.randn(2, 64), "time_ids": torch.randn(2, 6)}
    cond = torch.rand(2, 3, size, size)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        out["unet_step_ms"] = median_ms(
            lambda: unet(sample, t, embeds, added_cond_kwargs=added), runs)
        out["controlnet_step_ms"] = median_ms(
            lambda: controlnet(sample, t, encoder_hidden_states=embeds, controlnet_cond=cond,
                               added_cond_kwargs=added, return_dict=False), runs)
    loras: dict[str, dict[str, Any]] = {}
    for info in tree["lora_files"]:
        kind = f"r{info['rank']} x {info['layers']} layers"
        if kind in loras:
            continue
        path = str(root / "loras" / f"{info['name']}.safetensors")
        load = []
        for i in range(max(2, runs // 2)):
            start = time.perf_counter()
            pipe.load_lora_weights(path, adapter_name=f"a{i}")
            load.append((time.perf_counter() - start) * 1e3)
            pipe.delete_adapters([f"a{i}"])
        loras[kind] = {"load_ms": statistics.median(load), "keys": info["keys"],
                       "bytes": info["nbytes"]}
    out["loras"] = loras
    image = Image.new("RGB", (size, size))
    args = dict(prompt="a lighthouse", num_inference_steps=steps, height=size, width=size,
                output_type="np")
    first_lora = str(root / "loras" / f"{tree['loras'][0]}.safetensors")

    def with_lora() -> None:
        cn_pipe.load_lora_weights(first_lora, adapter_name="req")
        cn_pipe(image=image, **args)
        cn_pipe.unload_lora_weights()

    out["pipeline_ms"] = {
        "base": median_ms(lambda: pipe(**args), max(1, runs // 2)),
        "controlnet": median_ms(lambda: cn_pipe(image=image, **args), max(1, runs // 2)),
        "controlnet_lora_per_request": median_ms(with_lora, max(1, runs // 2)),
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bench/results/models-sdxl-shaped",
                        help="the preset's tree (written when missing)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure")
    parser.add_argument("--steps", type=int, default=20, help="steps of the whole pipelines")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="bench/results/sdxl_shaped_ratios.json",
                        help="JSON results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = ensure_tree(Path(args.models))
    load_before = os.getloadavg()
    figures = measure(root, args.runs, args.steps, args.size)
    unet_ms = figures["unet_step_ms"]
    rows = [("ControlNet step / UNet step", figures["controlnet_step_ms"] / unet_ms,
             H200_MS["controlnet_step"] / H200_MS["unet_step"])]
    for kind, lora in figures["loras"].items():
        rows.append((f"LoRA load / UNet step ({kind})", lora["load_ms"] / unet_ms,
                     H200_MS["lora_load"] / H200_MS["unet_step"]))
    print(f"\nsdxl-shaped, {args.size}x{args.size}, batch 2, {args.threads} torch thread(s); "
          f"UNet step {unet_ms:.1f} ms, ControlNet step {figures['controlnet_step_ms']:.1f} ms")
    print(f"{'ratio':<48}{'this CPU':>10}{'H200, SDXL 1024':>18}")
    for name, here, h200 in rows:
        print(f"{name:<48}{here:>10.2f}{h200:>18.2f}")
    print("whole pipelines, ms: " + ", ".join(f"{k} {v:.0f}"
                                              for k, v in figures["pipeline_ms"].items()))
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        date=str(date.today()), size=args.size, threads=args.threads, runs=args.runs,
        loadavg_before=load_before, loadavg_after=load_after, figures=figures,
        ratios=[dict(ratio=n, here=round(h, 3), h200=round(g, 3)) for n, h, g in rows]),
        indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
