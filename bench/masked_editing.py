"""Masked edits of a template with and without the activation cache: latency and quality.

On the "small" generated model (256x256 images, 32x32 latents), for mask
ratios 5/10/20/40/80% (a centred box, in latent tokens): the exact edit and
the cached edit (the template recorded once beforehand), interleaved, after
one warm-up each; median of N. Quality: SSIM and PSNR of the cached image
against the exact one. The step math is the denoiser's (request state,
editor, masked UNet), run in this process, with the services' preprocessing.
Also an ablation at 20%: the per-block planner and the overlapped loader on
and off. Prints tables, writes JSON, and writes the edit cost profile the
gateway's mask-aware placement fits its model on.

    python bench/masked_editing.py [--runs 5] [--steps 20] [--threads 1]
    python bench/masked_editing.py --trained assets/shapes-models [--templates 8]

With ``--trained`` it measures quality only, on the trained shapes model's
inpainting UNet (64x64): templates are shapes scenes, each edit asks for
another colour, and the evaluator reads the colour in the exact and the
cached edit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

from services.common.tiny_model import write_tiny_model  # noqa: E402
from services.denoiser.activation_cache import CacheSettings  # noqa: E402
from services.denoiser.template_editing import EditSettings, TemplateEditor  # noqa: E402
from tests.diffusers_reference import reference, sample_image  # noqa: E402
from tests.template_edit_loop import EditPipeline, box_mask  # noqa: E402

RATIOS = (0.05, 0.10, 0.20, 0.40, 0.80)
SIZE = 256
TEMPLATE_PROMPT = "a studio photo of a handbag on a marble table"
EDIT_PROMPT = "a studio photo of a red leather handbag on a marble table"
SEED = 3


def ensure_model(root: Path) -> Path:
    if not (root / "tree.json").exists():
        write_tiny_model(root, seed=0, preset="small")
    return root


def quality(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    ssim = structural_similarity(a, b, channel_axis=2, data_range=1.0,
                                 win_size=min(7, *a.shape[:2]) // 2 * 2 + 1)
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0) if np.any(a != b) else float("inf")
    return float(ssim), float(psnr)


def mask_box(ratio: float, size: int = SIZE) -> tuple[slice, slice]:
    """The pixels of the (box) mask: where the edit paints."""
    rows, cols = np.nonzero(np.asarray(box_mask(size, ratio)))
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


class Bench:
    def __init__(self, models: Path, settings: EditSettings, steps: int,
                 model: str = "tiny-sd-inpainting", image: PIL.Image.Image | None = None,
                 prompts: tuple[str, str] = (TEMPLATE_PROMPT, EDIT_PROMPT),
                 template_id: str = "bench-template") -> None:
        self.editor = TemplateEditor(settings)
        self.pipe = EditPipeline(models, self.editor, model)
        self.image = image or sample_image(SEED, SIZE)
        self.size = self.image.size[0]
        self.steps = steps
        self.edit_prompt = prompts[1]
        self.template = {c: self.pipe.template_edit(template_id, self.image, prompts[0], c)
                         for c in (False, True)}

    def args(self, ratio: float, cache: bool) -> dict[str, object]:
        edit = replace(self.template[cache], recorded=[])  # a fresh TemplateEdit per request
        return dict(request_id=f"r{ratio}-{cache}", prompt=self.edit_prompt, image=self.image,
                    mask=box_mask(self.size, ratio), seed=SEED, steps=self.steps, edit=edit)

    def record(self) -> int:
        """Records the template: a first cached edit runs exact, with the recording alongside."""
        args = self.args(0.2, True)
        run = self.pipe.run(args)
        assert run.mode == "exact"
        return args["edit"].cache_bytes  # type: ignore[attr-defined]

    def measure(self, ratio: float, runs: int) -> dict[str, object]:
        exact_ms, cached_ms, exact_total, cached_total = [], [], [], []
        exact = cached = None
        for i in range(runs + 1):
            exact = self.pipe.run(self.args(ratio, False))
            cached = self.pipe.run(self.args(ratio, True))
            assert exact.mode == "exact" and cached.mode == "cached", (exact.mode, cached.mode)
            if i:
                exact_ms.append(exact.denoise_ms)
                cached_ms.append(cached.denoise_ms)
                exact_total.append(exact.total_ms)
                cached_total.append(cached.total_ms)
        assert exact is not None and cached is not None
        ssim, psnr = quality(cached.pixels, exact.pixels)
        box = mask_box(ratio, self.size)
        ssim_in, psnr_in = quality(cached.pixels[box], exact.pixels[box])
        med = statistics.median
        return {"ratio": ratio, "region_ratio": self._region(ratio),
                "exact_denoise_ms": med(exact_ms), "cached_denoise_ms": med(cached_ms),
                "exact_total_ms": med(exact_total), "cached_total_ms": med(cached_total),
                "speedup_denoise": med(exact_ms) / med(cached_ms),
                "speedup_total": med(exact_total) / med(cached_total),
                "ssim": ssim, "psnr_db": psnr, "ssim_in_mask": ssim_in,
                "psnr_in_mask_db": psnr_in, "block_modes": self._modes(),
                "exact_denoise_runs_ms": exact_ms, "cached_denoise_runs_ms": cached_ms}

    def _region(self, ratio: float) -> float:
        from services.gateway.attachments.template_edit import region_ratio
        from services.gateway.images import mask_condition

        return region_ratio(mask_condition(box_mask(self.size, ratio), self.size, self.size, 8),
                            8, self.editor.settings.halo)

    def _modes(self) -> str:
        return "".join("S" if sparse else "D" for sparse in self.editor.last_modes)


def check_exact(models: Path, bench: Bench) -> float:
    """The in-process exact edit equals the diffusers inpainting pipeline."""
    run = bench.pipe.run(bench.args(0.2, False))
    expected = reference(models, prompt=EDIT_PROMPT, seed=SEED, steps=bench.steps,
                         image=bench.image, mask=box_mask(SIZE, 0.2), width=SIZE, height=SIZE,
                         model="tiny-sd-inpainting")
    return float(np.abs(run.pixels - expected).max())


def ablation(models: Path, base: EditSettings, steps: int, runs: int) -> list[dict[str, object]]:
    rows = []
    for plan_blocks in (True, False):
        for overlap in (True, False):
            settings = replace(base, plan_blocks=plan_blocks, overlap=overlap,
                               cache=replace(base.cache, memory_dir=tempfile.mkdtemp()))
            bench = Bench(models, settings, steps)
            bench.record()
            times = []
            for i in range(runs + 1):
                run = bench.pipe.run(bench.args(0.2, True))
                if i:
                    times.append(run.denoise_ms)
            rows.append({"plan_blocks": plan_blocks, "overlap": overlap,
                         "cached_denoise_ms": statistics.median(times),
                         "block_modes": bench._modes()})
    return rows


def trained_rows(models: Path, settings: EditSettings, steps: int, templates: int
                 ) -> list[dict[str, object]]:
    """Quality only, on the trained shapes model: per template (a held-out scene moved to
    the centre, under the centred box masks) the edit asks for another colour; SSIM and
    PSNR of the cached image against the exact one, and how often the evaluator reads the
    asked colour in each."""
    from training import shapes
    from training.evaluate import held_out_cases, score

    per_ratio: dict[float, list[dict[str, float]]] = {r: [] for r in RATIOS}
    colours = list(shapes.COLOURS)
    for n, case in enumerate(held_out_cases(templates)):
        scene = replace(case.scene, position="in the centre")
        edited = replace(scene, colour=colours[(colours.index(scene.colour) + 1 + n % 5) % 6])
        bench = Bench(models, settings, steps, "shapes-sd-inpainting", shapes.render(scene),
                      (shapes.caption(scene), shapes.caption(edited)), f"bench-shapes-{n}")
        bench.record()
        for ratio in RATIOS:
            exact = bench.pipe.run(bench.args(ratio, False))
            cached = bench.pipe.run(bench.args(ratio, True))
            assert exact.mode == "exact" and cached.mode == "cached", (exact.mode, cached.mode)
            ssim, psnr = quality(cached.pixels, exact.pixels)
            box = mask_box(ratio, bench.size)
            ssim_in, psnr_in = quality(cached.pixels[box], exact.pixels[box])
            read = [score(np.round(run.pixels * 255).astype(np.uint8), edited)["colour"]
                    for run in (exact, cached)]
            per_ratio[ratio].append({"ssim": ssim, "psnr_db": psnr, "ssim_in_mask": ssim_in,
                                     "psnr_in_mask_db": psnr_in, "exact_colour": read[0],
                                     "cached_colour": read[1]})
    return [{"ratio": ratio, **{k: statistics.fmean(r[k] for r in rows) for k in rows[0]}}
            for ratio, rows in per_ratio.items()]


def main_trained(args: argparse.Namespace, settings: EditSettings) -> int:
    rows = trained_rows(Path(args.trained), settings, args.steps, args.templates)
    print(f"\ncached against exact edits, trained shapes model, {args.steps} steps, "
          f"mean of {args.templates} templates (the edit asks for another colour)")
    print("| mask | SSIM | PSNR dB | SSIM in mask | PSNR in mask dB | asked colour read, "
          "exact | cached |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ratio']:.0%} | {r['ssim']:.4f} | {r['psnr_db']:.1f} | "
              f"{r['ssim_in_mask']:.4f} | {r['psnr_in_mask_db']:.1f} | "
              f"{r['exact_colour']:.0%} | {r['cached_colour']:.0%} |")
    out = Path(args.out.replace(".json", "_trained.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": date.today().isoformat(), "models": args.trained,
                               "steps": args.steps, "templates": args.templates,
                               "halo": args.halo, "cache_dtype": args.dtype, "rows": rows},
                              indent=1))
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per row")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--halo", type=int, default=1,
                        help="latent tokens around the mask recomputed too")
    parser.add_argument("--dtype", default="float16", help="dtype of the cached activations")
    parser.add_argument("--models", default="bench/results/models-small",
                        help="model tree (written with the small preset when missing)")
    parser.add_argument("--out", default="bench/results/masked_editing.json",
                        help="JSON results file")
    parser.add_argument("--profile-out", default="bench/results/edit_cost_profile.json",
                        help="where the edit cost profile (for the gateway's estimate) goes")
    parser.add_argument("--no-ablation", action="store_true",
                        help="leave out the rows with one part of the technique off")
    parser.add_argument("--trained", default="", help="a trained shapes models folder "
                        "(assets/shapes-models): quality of cached edits over --templates")
    parser.add_argument("--templates", type=int, default=8, help="templates with --trained")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.trained:
        return main_trained(args, EditSettings(cache=CacheSettings(
            memory_dir=tempfile.mkdtemp(), dtype=args.dtype), halo=args.halo))
    models = ensure_model(Path(args.models))
    settings = EditSettings(cache=CacheSettings(memory_dir=tempfile.mkdtemp(), dtype=args.dtype),
                            halo=args.halo)
    bench = Bench(models, settings, args.steps)
    exact_diff = check_exact(models, bench)
    print(f"exact edit vs diffusers inpainting: max abs diff {exact_diff:.2e}")
    started = time.monotonic()
    cache_bytes = bench.record()
    print(f"template recorded: {cache_bytes / 2**20:.1f} MiB "
          f"({args.steps} steps, {args.dtype}), {time.monotonic() - started:.1f} s")
    rows = []
    print(f"\n| mask | region (halo {args.halo}) | exact ms | cached ms | speedup | "
          "end-to-end speedup | SSIM | PSNR dB | SSIM in mask | PSNR in mask | blocks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for ratio in RATIOS:
        row = bench.measure(ratio, args.runs)
        rows.append(row)
        print(f"| {ratio:.0%} | {row['region_ratio']:.0%} | {row['exact_denoise_ms']:.0f} | "
              f"{row['cached_denoise_ms']:.0f} | {row['speedup_denoise']:.2f}x | "
              f"{row['speedup_total']:.2f}x | {row['ssim']:.4f} | {row['psnr_db']:.1f} | "
              f"{row['ssim_in_mask']:.4f} | {row['psnr_in_mask_db']:.1f} | "
              f"{row['block_modes']} |", flush=True)
    ablations = [] if args.no_ablation else ablation(models, settings, args.steps, args.runs)
    if ablations:
        print("\n| 20% mask | overlapped loading | cached ms | blocks |")
        print("|---|---|---|---|")
        for a in ablations:
            print(f"| {'planner' if a['plan_blocks'] else 'all sparse'} | "
                  f"{'on' if a['overlap'] else 'off'} | {a['cached_denoise_ms']:.0f} | "
                  f"{a['block_modes']} |")
    mb_per_step = cache_bytes / 1e6 / args.steps
    profile = {"cached": [[r["region_ratio"], mb_per_step, r["cached_denoise_ms"] / args.steps]
                          for r in rows],
               "exact_ms": [r["exact_denoise_ms"] / args.steps for r in rows],
               "size": SIZE, "threads": args.threads}
    result = {"date": date.today().isoformat(), "machine": platform.processor() or
              platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
              "model": "small (tiny-sd-inpainting, 256x256)", "steps": args.steps,
              "runs": args.runs, "halo": args.halo, "cache_dtype": args.dtype,
              "cache_bytes": cache_bytes, "exact_vs_diffusers_max_abs": exact_diff,
              "rows": rows, "ablation_20pct": ablations}
    for path, data in ((args.out, result), (args.profile_out, profile)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1))
    print(f"\nwrote {args.out} and {args.profile_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
