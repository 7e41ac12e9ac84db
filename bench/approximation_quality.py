"""Quality cost of the approximations: SSIM and PSNR of each image against the exact one.

BAL: the LoRA joins exactly at step K (the worst case the bound allows: the
load finished just as the request reached K), for K in {0, 2, 5, 10} of 30
steps; K = 0 is the exact computation. Stale residuals: step t adds step
t-1's ControlNet residuals. Each row is the mean over a few seeded prompts,
run through the denoiser's in-process engine and decoded by the model's VAE;
also the cosine similarity of the final latents. Prints a table, writes JSON.

With ``--trained DIR`` (the shapes model the project trains, e.g.
assets/shapes-models) the prompts are held-out shape captions, the LoRAs its
style LoRAs, the ControlNet's condition each scene's edge map, and each row
also gives the evaluator's accuracy of the exact and of the approximated
images (colour; the LoRA's style; the ControlNet's shape position and IoU).

    python bench/approximation_quality.py [--preset small] [--steps 30] [--prompts 4]
    python bench/approximation_quality.py --trained assets/shapes-models --prompts 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
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


@dataclass
class Subject:
    """The model a run measures: its LoRAs, ControlNet, prompts and (trained) scenes."""

    model: str
    loras: tuple[str, ...]
    controlnet: str
    prompts: list[str]
    scenes: list[Any] | None = None  # what each prompt describes, for the evaluator
    styles: tuple[str, ...] = ()  # each LoRA's drawing style
    guidance: float = 7.5

    def condition(self, i: int, size: int) -> torch.Tensor:
        if self.scenes is None:
            return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(200 + i))
        from training.addon_stages import edge_batch

        return edge_batch([self.scenes[i]], size)

    def controlnet_prompt(self, i: int) -> str:
        if self.scenes is None:
            return self.prompts[i]
        from training.shapes import caption_text, describe

        return caption_text({**describe(self.scenes[i]), "position": None, "size": None})


def random_subject(count: int) -> Subject:
    return Subject("tiny-sd", ("tiny-lora-r4", "tiny-lora-r8"), "tiny-cn-a",
                   list(PROMPTS[:count]))


def trained_subject(count: int) -> Subject:
    from training.evaluate import GUIDANCE, held_out_cases
    from training.export import BASE, CONTROLNET, LORAS

    cases = held_out_cases(count)
    return Subject(BASE, tuple(LORAS.values()), CONTROLNET, [c.prompt for c in cases],
                   [c.scene for c in cases], tuple(LORAS), guidance=GUIDANCE)


def accuracy(subject: Subject, i: int, image: np.ndarray, keys: tuple[str, ...],
             style: str = "") -> dict[str, float]:
    """The evaluator's reading of one image against prompt ``i``'s scene (trained only)."""
    if subject.scenes is None:
        return {}
    from dataclasses import replace

    from training.evaluate import score

    scene = replace(subject.scenes[i], style=style) if style else subject.scenes[i]
    result = score(np.round(image * 255).astype(np.uint8), scene)
    return {k: result[k] for k in keys}


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


def job(model: str, embeds: tuple[torch.Tensor, torch.Tensor], seed: int, steps: int,
        size: int, guidance: float, **extra: Any) -> DenoiseJob:
    return DenoiseJob(request_id=f"q-{seed}-{time.monotonic_ns()}", model=model,
                      prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], width=size,
                      height=size, num_inference_steps=steps, guidance_scale=guidance, seed=seed,
                      **extra)


def bal_rows(store: ModelStore, engine: DenoiserEngine, decode: Decoder, subject: Subject,
             steps: int, size: int) -> list[dict[str, Any]]:
    rows = []
    for n, lora in enumerate(subject.loras):
        style = subject.styles[n] if subject.styles else ""
        layers = read_lora_layers(store, [lora])
        per_k: dict[int, list[dict[str, float]]] = {k: [] for k in BAL_BOUNDS}
        for i, prompt in enumerate(subject.prompts):
            embeds = tuple(encode_prompts(store, subject.model, [prompt, ""]))
            outcomes = {}
            for k in BAL_BOUNDS:
                loaded, on_step = join_at(layers, k)
                final = run(engine, job(subject.model, embeds, 100 + i, steps,  # type: ignore[arg-type]
                                        size, subject.guidance, addons={"lora": LoraRequest(
                                            (LoraSpec(lora, 1.0, ""),))}),
                            loras=loaded, bound=k, on_step=on_step)
                assert final.lora_step == k, (final.lora_step, k)
                outcomes[k] = (final.latents, decode(final.latents))
            exact = accuracy(subject, i, outcomes[0][1], ("colour", "style"), style)
            for k in BAL_BOUNDS:
                approx = accuracy(subject, i, outcomes[k][1], ("colour", "style"), style)
                per_k[k].append({**compare(outcomes[0], outcomes[k]),
                                 **{f"exact_{m}": v for m, v in exact.items()},
                                 **{f"approx_{m}": v for m, v in approx.items()}})
        for k in BAL_BOUNDS:
            rows.append({"switch": f"BAL K={k}", "lora": lora, **mean_of(per_k[k])})
    return rows


def stale_rows(store: ModelStore, engine: DenoiserEngine, decode: Decoder, subject: Subject,
               steps: int, size: int) -> list[dict[str, Any]]:
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_pretrained(
        store.root / "controlnets" / subject.controlnet, local_files_only=True,
        dtype=torch.float32).eval()
    keys = ("colour", "shape", "position", "iou")
    results = []
    for i in range(len(subject.prompts)):
        embeds = tuple(encode_prompts(store, subject.model, [subject.controlnet_prompt(i), ""]))
        cond = subject.condition(i, size)
        outcomes = []
        for stale in (False, True):
            spec = ControlNetSpec(subject.controlnet, "", cond)
            link = LocalControlNetLink(controlnet, torch.cat([cond] * 2),
                                       torch.cat([embeds[1], embeds[0]]))
            final = run(engine, job(subject.model, embeds, 200 + i, steps,  # type: ignore[arg-type]
                                    size, subject.guidance,
                                    addons={"controlnet": ControlNetRequest((spec,), stale)}),
                        [link])
            outcomes.append((final.latents, decode(final.latents)))
        exact = accuracy(subject, i, outcomes[0][1], keys)
        approx = accuracy(subject, i, outcomes[1][1], keys)
        results.append({**compare(outcomes[0], outcomes[1]),
                        **{f"exact_{m}": v for m, v in exact.items()},
                        **{f"approx_{m}": v for m, v in approx.items()}})
    return [{"switch": "stale ControlNet residuals", "lora": "", **mean_of(results)}]


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    print(f"\n{title}")
    print(f"{'switch':<28}{'LoRA':<16}{'SSIM':>8}{'PSNR dB':>9}{'latent cos':>12}"
          + ("  evaluator: exact -> approximated" if "exact_colour" in rows[0] else ""))
    for r in rows:
        measures = [k.removeprefix("exact_") for k in r if k.startswith("exact_")]
        pairs = ", ".join(f"{m} {r['exact_' + m]:.2f} -> {r['approx_' + m]:.2f}"
                          for m in measures)
        print(f"{r['switch']:<28}{r['lora']:<16}{r['ssim']:>8.4f}{r['psnr']:>9.2f}"
              f"{r['latent_cosine']:>12.4f}  {pairs}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny", "small"), default="small",
                        help="random-weight model to generate (without --trained)")
    parser.add_argument("--models", default="", help="default bench/results/models-<preset>")
    parser.add_argument("--trained", default="", help="a trained shapes models folder "
                        "(assets/shapes-models) instead of a random-weight model")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps")
    parser.add_argument("--prompts", type=int, default=4, help="prompts (held-out captions "
                        "with --trained) per row")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="", help="JSON (default bench/results/"
                        "approximation_quality[_trained].json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.trained:
        models, subject, label = Path(args.trained), trained_subject(args.prompts), "trained"
    else:
        models = ensure_models(Path(args.models or f"bench/results/models-{args.preset}"),
                               args.preset)
        subject, label = random_subject(args.prompts), args.preset
    store = ModelStore(models)
    size = store.pipeline(subject.model).default_size
    engine = DenoiserEngine(unet_loader(store).get)
    decode = Decoder(store, subject.model)
    try:
        rows = bal_rows(store, engine, decode, subject, args.steps, size)
        rows += stale_rows(store, engine, decode, subject, args.steps, size)
    finally:
        engine.stop()
    print_table(rows, f"quality against the exact image, {label} model ({models}), "
                      f"{size}x{size}, {args.steps} steps, guidance {subject.guidance:g}, "
                      f"mean of {len(subject.prompts)} prompts")
    out = Path(args.out or "bench/results/approximation_quality"
               + ("_trained" if args.trained else "") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    finite = [{k: ("inf" if v == float("inf") else v) for k, v in r.items()} for r in rows]
    out.write_text(json.dumps(dict(date=str(date.today()), model=label, models=str(models),
                                   size=size, steps=args.steps, guidance=subject.guidance,
                                   prompts=len(subject.prompts),
                                   rows=finite), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
