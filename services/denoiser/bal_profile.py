"""Measures a BAL profile per (model, LoRA) and stores it where the denoiser reads it.

For a few seeded prompts, the same request runs with the LoRA merged from
the start and without it; after each step the two latents are compared by
cosine similarity (mean over the prompts). K, the bound the denoiser uses for
``lora_async_steps = -1``, is the first step whose similarity is below 0.99:
until then the request without its LoRA follows nearly the same path.

    python -m services.denoiser.bal_profile --models-dir models --model tiny-sd \\
        --lora tiny-lora-r4 [--steps 30] [--prompts 3]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from services.common.model_store import ModelStore
from services.denoiser.addons.lora import LoraRequest, LoraSpec
from services.denoiser.addons.preview import PreviewSpec
from services.denoiser.bal import SIMILARITY_THRESHOLD, BalProfile, BalProfiles, LoraLayers
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import DenoiseJob, StepEvent
from services.denoiser.offline import encode_prompts, read_lora_layers, ready, run
from services.denoiser.unet_models import unet_loader

PROMPTS = ("a portrait of a woman in a garden", "a red car on a mountain road",
           "a bowl of fruit on a wooden table", "a lighthouse at dusk", "a cat asleep on a sofa")


def trajectory(engine: DenoiserEngine, job: DenoiseJob,
               layers: LoraLayers | None) -> list[torch.Tensor]:
    """The latents after each step."""
    seen: list[torch.Tensor] = []

    def on_step(event: StepEvent) -> None:
        assert event.preview_latents is not None
        seen.append(event.preview_latents.flatten().double())
    final = run(engine, job, loras=ready(layers) if layers else None, on_step=on_step)
    return [*seen, final.latents.flatten().double()]


def measure(store: ModelStore, engine: DenoiserEngine, model: str, lora: str, steps: int = 30,
            prompts: int = 3, guidance_scale: float = 7.5, size: int = 0) -> BalProfile:
    layers = read_lora_layers(store, [lora])
    side = size or store.pipeline(model).default_size
    totals: list[float] = []
    for i, prompt in enumerate(PROMPTS[:prompts]):
        positive, negative = encode_prompts(store, model, [prompt, ""])
        jobs = [DenoiseJob(request_id=f"profile-{i}-{with_lora}", model=model,
                           prompt_embeds=positive, negative_prompt_embeds=negative,
                           width=side, height=side, num_inference_steps=steps,
                           guidance_scale=guidance_scale, seed=1000 + i,
                           addons={"preview": PreviewSpec(1),
                                   **({"lora": LoraRequest((LoraSpec(lora, 1.0, ""),))}
                                      if with_lora else {})})
                for with_lora in (False, True)]
        plain = trajectory(engine, jobs[0], None)
        merged = trajectory(engine, jobs[1], layers)
        if not totals:  # one entry per iteration: PNDM runs steps + 1 of them
            totals = [0.0] * len(plain)
        for step, (a, b) in enumerate(zip(plain, merged, strict=True)):
            totals[step] += float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    similarity = [t / prompts for t in totals]
    return BalProfile(model=model, lora=lora, steps=steps, similarity=similarity,
                      threshold=SIMILARITY_THRESHOLD,
                      extra={"prompts": prompts, "guidance_scale": guidance_scale, "size": side})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--model", required=True)
    parser.add_argument("--lora", action="append", required=True,
                        help="LoRA to profile; repeat for several")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=3, choices=range(1, len(PROMPTS) + 1))
    parser.add_argument("--profiles-dir", default="",
                        help="where the denoiser reads profiles; default <models-dir>/profiles")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    store = ModelStore(args.models_dir)
    unets = unet_loader(store)
    engine = DenoiserEngine(unets.get)
    profiles = BalProfiles(args.profiles_dir or Path(args.models_dir) / "profiles")
    try:
        for lora in args.lora:
            profile = measure(store, engine, args.model, lora, args.steps, args.prompts)
            path = profiles.save(profile)
            print(f"{args.model} + {lora}: K = {profile.bound} of {profile.steps} steps "
                  f"(similarity {min(profile.similarity):.4f}..{max(profile.similarity):.4f}); "
                  f"wrote {path}")
    finally:
        engine.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
