"""Quality cost of the approximations: SSIM and PSNR of each image against the exact one.

BAL: the LoRA joins exactly at step K (the worst case the bound allows: the
load finished just as the request reached K), for K in {0, 2, 5, 10} of 30
steps; K = 0 is the exact computation. Stale residuals: step t adds step
t-1's ControlNet residuals. Each row is the mean over a few seeded prompts,
run through the denoiser's in-process engine and decoded by the model's VAE;
also the cosine similarity of the final latents. Prints a table, writes JSON.

    python bench/approximation_quality.py [--preset small] [--steps 30] [--prompts 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from services.common.model_store import ModelStore  # noqa: E402
from services.common.tiny_model import write_tiny_model  # noqa: E402
from services.denoiser.addons.controlnet import (  # noqa: E402
    ControlNetRequest,
    ControlNetSpec,
)
from services.denoiser.addons.lora import LoraRequest, LoraSpec  # noqa: E402
from services.denoiser.engine import DenoiserEngine  # noqa: E402
from services.denoiser.job import DenoiseJob  # noqa: E402
from services.denoiser.local_controlnet import LocalControlNetLink  # noqa: E402
from services.denoiser.offline import encode_prompts, join_at, read_lora_layers, run  # noqa: E402
from services.denoiser.unet_models import unet_loader  # noqa: E402

PROMPTS = ("a portrait of a woman in a garden", "a red car on a mountain road",
           "a bowl of fruit on a wooden table", "a lighthouse at dusk", "a cat asleep on a sofa",
           "a castle in the fog")
BAL_BOUNDS = (0, 2, 5, 10)
LORAS = ("tiny-lora-r4", "tiny-lora-r8")


def ensure_models(root: Path, preset: str) -> Path:
    if not (root / "tree.json").exists():
        write_tiny_model(root, seed=0, preset=preset)
    return root


class Decoder:
    def __init__(self, store: ModelStore, model: str) -> None:
        self.vae = store.load_vae(model)
        self.scaling = store.vae_scaling_factor(model)

    def __call__(self, latents: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            image = self.vae.decode(latents / self.scaling).sample
        return (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def compare(exact: tuple[torch.Tensor, np.ndarray],
            other: tuple[torch.Tensor, np.ndarray]) -> dict[str, float]:
    cosine = torch.nn.functional.cosine_similarity(exact[0].flatten().double(),
                                                   other[0].flatten().double(), dim=0)
    same = np.array_equal(exact[1], other[1])
    return {"ssim": float(structural_similarity(exact[1], other[1], channel_axis=2,
                                                data_range=1.0)),
            "psnr": float("inf") if same else float(peak_signal_noise_ratio(
                exact[1], other[1], data_range=1.0)),
            "latent_cosine": float(cosine)}


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.fmean(r[key] for r in rows), 4) for key in rows[0]}


def job(embeds: tuple[torch.Tensor, torch.Tensor], seed: int, steps: int, size: int,
        **extra: Any) -> DenoiseJob:
    return DenoiseJob(request_id=f"q-{seed}-{time.monotonic_ns()}", model="tiny-sd",
                      prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], width=size,
                      height=size, num_inference_steps=steps, guidance_scale=7.5, seed=seed,
                      **extra)


def bal_rows(store: ModelStore, engine: DenoiserEngine, decode: Decoder, prompts: list[str],
             steps: int, size: int) -> list[dict[str, Any]]:
    rows = []
    for lora in LORAS:
        layers = read_lora_layers(store, [lora])
        per_k: dict[int, list[dict[str, float]]] = {k: [] for k in BAL_BOUNDS}
        for i, prompt in enumerate(prompts):
            embeds = tuple(encode_prompts(store, "tiny-sd", [prompt, ""]))
            outcomes = {}
            for k in BAL_BOUNDS:
                loaded, on_step = join_at(layers, k)
                final = run(engine, job(embeds, 100 + i, steps, size,  # type: ignore[arg-type]
                                        addons={"lora": LoraRequest(
                                            (LoraSpec(lora, 1.0, ""),))}),
                            loras=loaded, bound=k, on_step=on_step)
                assert final.lora_step == k, (final.lora_step, k)
                outcomes[k] = (final.latents, decode(final.latents))
            for k in BAL_BOUNDS:
                per_k[k].append(compare(outcomes[0], outcomes[k]))
        for k in BAL_BOUNDS:
            rows.append({"switch": f"BAL K={k}", "lora": lora, **mean_of(per_k[k])})
    return rows


def stale_rows(store: ModelStore, engine: DenoiserEngine, decode: Decoder, prompts: list[str],
               steps: int, size: int) -> list[dict[str, Any]]:
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_pretrained(store.root / "controlnets" / "tiny-cn-a",
                                                 local_files_only=True).eval()
    results = []
    for i, prompt in enumerate(prompts):
        embeds = tuple(encode_prompts(store, "tiny-sd", [prompt, ""]))
        cond = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(200 + i))
        outcomes = []
        for stale in (False, True):
            spec = ControlNetSpec("tiny-cn-a", "", cond)
            link = LocalControlNetLink(controlnet, torch.cat([cond] * 2),
                                       torch.cat([embeds[1], embeds[0]]))
            final = run(engine, job(embeds, 200 + i, steps, size,  # type: ignore[arg-type]
                                    addons={"controlnet": ControlNetRequest((spec,), stale)}),
                        [link])
            outcomes.append((final.latents, decode(final.latents)))
        results.append(compare(outcomes[0], outcomes[1]))
    return [{"switch": "stale ControlNet residuals", "lora": "", **mean_of(results)}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "small"), default="small")
    parser.add_argument("--models", default="", help="default bench/results/models-<preset>")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--out", default="bench/results/approximation_quality.json")
    args = parser.parse_args()
    models = ensure_models(Path(args.models or f"bench/results/models-{args.preset}"),
                           args.preset)
    store = ModelStore(models)
    size = store.pipeline("tiny-sd").default_size
    engine = DenoiserEngine(unet_loader(store).get)
    decode = Decoder(store, "tiny-sd")
    prompts = list(PROMPTS[:args.prompts])
    try:
        rows = bal_rows(store, engine, decode, prompts, args.steps, size)
        rows += stale_rows(store, engine, decode, prompts, args.steps, size)
    finally:
        engine.stop()
    print(f"\nquality against the exact image, {args.preset} model, {size}x{size}, "
          f"{args.steps} steps, mean of {len(prompts)} prompts")
    print(f"{'switch':<28}{'LoRA':<14}{'SSIM':>8}{'PSNR dB':>9}{'latent cos':>12}")
    for r in rows:
        print(f"{r['switch']:<28}{r['lora']:<14}{r['ssim']:>8.4f}{r['psnr']:>9.2f}"
              f"{r['latent_cosine']:>12.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    finite = [{k: ("inf" if v == float("inf") else v) for k, v in r.items()} for r in rows]
    out.write_text(json.dumps(dict(date=str(date.today()), preset=args.preset, size=size,
                                   steps=args.steps, prompts=len(prompts), rows=finite),
                              indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
