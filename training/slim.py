"""The slimmed tier of a model: PCA-chosen widths, distilled from the full UNet.

    python -m training slim --models assets/shapes-models --tau 0.75

1. Per-layer PCA of the full UNet's filters gives each level a width that keeps
   a variance fraction ``tau`` (:mod:`training.filter_pca`).
2. The slim UNet starts from the full one's kept channels
   (:mod:`training.slim_unet`).
3. Distillation: on the training distribution (seeded scenes, the model's own
   VAE and text encoder), the slim UNet learns the full one's noise prediction
   (output loss) and its block outputs on the kept channels (feature loss),
   and with ``--guidance`` its classifier-free-guided prediction at the served
   scale (guided loss).
4. It is written as its own pipeline folder, ``<model>-slim``, sharing the
   full model's VAE, text encoder, tokenizer and scheduler, with ``tier.json``
   inside: tau, widths, parameters, the step time against the full UNet
   measured in the same process, and the quality delta from the evaluator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from training import architecture, filter_pca
from training.diffusion_data import Frozen, noisy_input
from training.evaluate import GUIDANCE
from training.export import BASE, save_pipeline
from training.loop import Stage, StageSpec, stage_generator
from training.slim_unet import ChannelPlan, slim_unet

FEATURE_WEIGHT = 0.5
LOAD = dict(local_files_only=True, dtype=torch.float32)


def load_base(models: Path, model: str) -> tuple[Any, Any, Any, Any]:
    """(unet, vae, tokenizer, text encoder) of a pipeline folder, float32, frozen."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = models / model
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", **LOAD).eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae", **LOAD).eval()
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **LOAD).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    for module in (unet, vae, encoder):
        module.requires_grad_(False)
    return unet, vae, tokenizer, encoder


class BlockOutputs:
    """Records the down, mid and up blocks' output hidden states of a UNet."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.values: list[torch.Tensor] = []
        blocks = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks)
        self.handles = [b.register_forward_hook(self._hook) for b in blocks]

    def _hook(self, _module: Any, _inputs: Any, output: Any) -> None:
        self.values.append(output[0] if isinstance(output, tuple) else output)

    def take(self) -> list[torch.Tensor]:
        values, self.values = self.values, []
        return values


def distill(teacher: torch.nn.Module, student: torch.nn.Module, plan: ChannelPlan,
            frozen: Frozen, work: Path, seed: int, steps: int, batch: int, name: str,
            guidance: float = 0.0, quiet: bool = False) -> Stage:
    """Trains ``student`` to predict what ``teacher`` predicts: the noise (output loss) and the
    block outputs on the kept channels (feature loss). With ``guidance`` above 0 each batch
    also runs with the empty caption, and the output loss is on the classifier-free-guided
    prediction at that scale as well: the difference between captioned and empty predictions
    carries colour and shape, it is multiplied by the guidance when sampling, and on its own
    it is too small a part of the plain noise loss for the student to learn it closely."""
    schedule = architecture.training_noise_schedule()
    teacher_blocks, student_blocks = BlockOutputs(teacher), BlockOutputs(student)
    student.train()
    settings: dict[str, Any] = {"batch": batch, "widths": list(student.config.block_out_channels),
                                "feature_weight": FEATURE_WEIGHT}
    if guidance:
        settings["guidance"] = guidance
    spec = StageSpec(name, steps=steps, lr=5e-4, seed=seed, warmup=20, ema_decay=0.99,
                     settings=settings)
    empty = frozen.encode_text([""])

    def loss_at(step: int) -> torch.Tensor:
        generator = stage_generator(seed, spec.name, step)
        data = frozen.batch(seed, spec.name, step, batch, generator=generator)
        noisy, t, _ = noisy_input(data, generator, schedule)
        text = data.text
        if guidance:  # the same latents with the empty caption after the captioned ones
            noisy, t = noisy.repeat(2, 1, 1, 1), t.repeat(2)
            text = torch.cat([text, empty.expand_as(text)])
        with torch.no_grad():
            target = teacher(noisy, t, encoder_hidden_states=text).sample
        # Block outputs are level streams: the slim one holds the kept channels of the full.
        wanted = [f.index_select(1, plan.stream[f.shape[1]]) for f in teacher_blocks.take()]
        output = student(noisy, t, encoder_hidden_states=text).sample
        features = [(s - f).pow(2).mean() / f.var().clamp_min(1e-6)
                    for s, f in zip(student_blocks.take(), wanted, strict=True)]
        loss = (output - target).pow(2).mean() + FEATURE_WEIGHT * torch.stack(features).mean()
        if guidance:
            loss = loss + (guided(output, guidance) - guided(target, guidance)).pow(2).mean()
        return loss

    stage = Stage(spec, work, dict(student.named_parameters()), loss_at, quiet)
    stage.run()
    with torch.no_grad():
        for key, p in student.named_parameters():
            p.copy_(stage.final_weights()[key])
    student.eval()
    return stage


def guided(prediction: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance of a batch whose second half is the first's with the empty
    caption: empty + guidance * (captioned - empty)."""
    captioned, empty = prediction.chunk(2)
    return empty + guidance * (captioned - empty)


def step_times(full: torch.nn.Module, slim: torch.nn.Module, latent_side: int, text_dim: int,
               batch: int = 2, runs: int = 30, threads: int = 1) -> dict[str, float]:
    """Median ms of one UNet call (``batch`` rows: one request with CFG by default), the two
    models interleaved call by call in this process, on ``threads`` torch threads (one by
    default, as a CPU fleet runs each denoiser replica; a team of OpenMP threads adds a
    fixed cost to each of the UNet's many small operations, which hides the difference)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _step_times(full, slim, latent_side, text_dim, batch, runs)
    finally:
        torch.set_num_threads(before)


def _step_times(full: torch.nn.Module, slim: torch.nn.Module, latent_side: int, text_dim: int,
                batch: int, runs: int) -> dict[str, float]:
    latents = torch.randn(batch, full.config.in_channels, latent_side, latent_side,
                          generator=torch.Generator().manual_seed(0))
    text = torch.randn(batch, 77, text_dim, generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {"full": [], "slim": []}
    with torch.inference_mode():
        for run in range(runs + 3):
            for key, unet in (("full", full), ("slim", slim)):
                started = time.perf_counter()
                unet(latents, 500, encoder_hidden_states=text)
                if run >= 3:
                    times[key].append((time.perf_counter() - started) * 1000)
    full_ms, slim_ms = (sorted(times[k])[len(times[k]) // 2] for k in ("full", "slim"))
    return {"full_ms": round(full_ms, 3), "slim_ms": round(slim_ms, 3),
            "speedup": round(full_ms / slim_ms, 3), "batch": batch, "runs": runs,
            "threads": torch.get_num_threads(), "load_average": list(os.getloadavg())}


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(models: Path, model: str, tau: float, work: Path, seed: int, steps: int, batch: int,
          widths: list[int] | None = None, guidance: float = 0.0, quiet: bool = False
          ) -> tuple[torch.nn.Module, dict[str, Any], tuple[Any, Any, Any, Any]]:
    """The distilled slim UNet and what was measured of it on the way."""
    base = load_base(models, model)
    full, vae, tokenizer, encoder = base
    chosen, pcas = filter_pca.level_widths(full, tau)
    widths = widths or chosen
    torch.manual_seed(seed)
    slim, plan = slim_unet(full, widths)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent
    frozen = Frozen(vae, tokenizer, encoder, side=full.config.sample_size * factor)
    name = f"slim_tau{tau:g}_" + "-".join(map(str, widths)) + (f"_g{guidance:g}" if guidance
                                                                else "")
    stage = distill(full, slim, plan, frozen, work, seed, steps, batch, name, guidance, quiet)
    info = {"tau": tau, "block_out_channels": widths, "pca_widths": chosen,
            "base_block_out_channels": list(full.config.block_out_channels),
            "parameters": parameters(slim), "base_parameters": parameters(full),
            "layers": [{"name": p.name, "filters": p.filters, "kept": p.kept} for p in pcas],
            "distill": {"steps": steps, "batch": batch, "seed": seed, "guidance": guidance,
                        "final_loss": stage.losses[-1][1] if stage.losses else None}}
    return slim, info, base


def write_tier(folder: Path, slim: torch.nn.Module, info: dict[str, Any],
               base: tuple[Any, Any, Any, Any]) -> Path:
    _, vae, tokenizer, encoder = base
    save_pipeline(folder, slim, vae, encoder, tokenizer)
    (folder / "tier.json").write_text(json.dumps(info, indent=1))
    return folder


def render(models: Path, model: str, count: int) -> list[Any]:
    """Text-to-image renders of the evaluator's held-out captions."""
    from training.evaluate import Renderer, held_out_cases
    from training.shapes import IMAGE_SIZE

    return Renderer(models, base=model).render("txt2img", held_out_cases(count),
                                               height=IMAGE_SIZE, width=IMAGE_SIZE)


def quality(full_images: list[Any], slim_images: list[Any]) -> dict[str, Any]:
    """The evaluator's txt2img accuracy of both, and SSIM of the slim images to the full."""
    from skimage.metrics import structural_similarity

    from training.evaluate import held_out_cases, score

    cases = held_out_cases(len(full_images))
    result: dict[str, Any] = {}
    for images, key in ((full_images, "full"), (slim_images, "slim")):
        rows = [score((im * 255).round().clip(0, 255).astype("uint8"), c.scene)
                for im, c in zip(images, cases, strict=True)]
        for metric in ("colour", "shape", "position"):
            result[f"{key}_{metric}"] = round(sum(r[metric] for r in rows) / len(rows), 4)
    ssims = [structural_similarity(a, b, channel_axis=2, data_range=1.0)
             for a, b in zip(full_images, slim_images, strict=True)]
    result["ssim_to_full"] = round(float(sum(ssims) / len(ssims)), 4)
    result["count"] = len(full_images)
    return result


def add_distill_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """--steps, --batch and --guidance of a distillation (this command's and the bench's)."""
    parser.add_argument("--steps", type=int, default=steps,
                        help="distillation steps of each slim UNet")
    parser.add_argument("--batch", type=int, default=8,
                        help="distillation batch (scenes; with --guidance each runs twice)")
    parser.add_argument("--guidance", type=float, default=GUIDANCE,
                        help="also match the teacher's classifier-free-guided prediction at "
                        "this scale (the served guidance); 0: noise and features only")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training slim",
                                     description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default="assets/shapes-models", help="models folder")
    parser.add_argument("--model", default=BASE, help="pipeline folder to slim")
    parser.add_argument("--tau", type=float, default=0.75,
                        help="variance fraction of each layer's filters to keep (0-1]")
    parser.add_argument("--widths", default="", help="comma-separated level widths instead "
                        "of the PCA's (for comparisons)")
    add_distill_arguments(parser, steps=4000)
    parser.add_argument("--seed", type=int, default=0, help="seeds batches and noise")
    parser.add_argument("--work", default="build/shapes-slim",
                        help="distillation checkpoints (a rerun resumes)")
    parser.add_argument("--count", type=int, default=50, help="held-out captions to evaluate")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if not 0 < args.tau <= 1:
        parser.error(f"--tau: {args.tau} is not in (0, 1]")
    if args.guidance < 0:
        parser.error(f"--guidance: {args.guidance} is negative")
    torch.set_num_threads(args.threads)
    models = Path(args.models)
    widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    slim, info, base = build(models, args.model, args.tau, Path(args.work), args.seed,
                             args.steps, args.batch, widths, args.guidance)
    full = base[0]
    # one request with CFG (2 rows), and 4 of them batched, as the fleet batches under load
    info["step_time"] = step_times(full, slim, full.config.sample_size,
                                   full.config.cross_attention_dim)
    info["step_time_batch8"] = step_times(full, slim, full.config.sample_size,
                                          full.config.cross_attention_dim, batch=8)
    info["tier"] = "fast"
    info["base_model"] = args.model
    info["command"] = "python -m training slim " + " ".join(shlex.quote(a) for a in
                                                             (argv or sys.argv[1:]))
    info["machine"] = {"cpus": os.cpu_count(), "processor": platform.processor()}
    folder = write_tier(models / f"{args.model}-slim", slim, info, base)
    info["quality"] = quality(render(models, args.model, args.count),
                              render(models, folder.name, args.count))
    (folder / "tier.json").write_text(json.dumps(info, indent=1))
    print(json.dumps({k: info[k] for k in ("tau", "block_out_channels", "parameters",
                                           "base_parameters", "step_time", "step_time_batch8",
                                           "quality")},
                     indent=1))
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
