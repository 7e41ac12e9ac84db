"""The slimmed tier at several tau: parameters, step time against the full UNet, accuracy.

For each tau: the PCA widths, a slim UNet distilled from the full one (the
same recipe as ``python -m training slim``; checkpoints under --work, so a
rerun resumes), then in this process the full and slim UNet calls interleaved
(batch 2: one request with classifier-free guidance; and batch 8) and the
evaluator's text-to-image accuracy on held-out captions with the SSIM of the
slim images to the full model's. Prints a table, writes JSON.

    python bench/slim_tiers.py --models assets/shapes-models [--taus 0.6,0.7,0.8,0.9]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import date
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from training.slim import add_distill_arguments, build, quality, render, step_times, write_tier  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="assets/shapes-models", help="models folder")
    parser.add_argument("--model", default="shapes-sd", help="pipeline folder to slim")
    parser.add_argument("--taus", default="0.6,0.7,0.8,0.9", help="comma-separated")
    add_distill_arguments(parser, steps=600)
    parser.add_argument("--count", type=int, default=50, help="held-out captions to evaluate")
    parser.add_argument("--runs", type=int, default=30, help="timed UNet calls per model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the distillation and renders (step times: 1)")
    parser.add_argument("--work", default="build/shapes-slim", help="distillation checkpoints")
    parser.add_argument("--out", default="bench/results/slim_tiers.json", help="JSON report")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = Path(args.models)
    full_images = render(models, args.model, args.count)
    scratch = Path(tempfile.mkdtemp(prefix="slim-tiers-"))
    rows = []
    for tau in (float(t) for t in args.taus.split(",")):
        slim, info, base = build(models, args.model, tau, Path(args.work), 0, args.steps,
                                 args.batch, guidance=args.guidance, quiet=True)
        full, side = base[0], base[0].config.sample_size  # latent side
        times = {b: step_times(full, slim, side, full.config.cross_attention_dim, b, args.runs)
                 for b in (2, 8)}
        name = f"tau{tau:g}"
        write_tier(scratch / name, slim, info, base)
        row = {"tau": tau, "widths": info["block_out_channels"],
               "parameters": info["parameters"], "base_parameters": info["base_parameters"],
               "step_b2": times[2], "step_b8": times[8],
               **quality(full_images, render(scratch, name, args.count))}
        rows.append(row)
        print(f"tau {tau}: {row}", file=sys.stderr, flush=True)
    print(f"\nslim tiers of {args.model}: distilled {args.steps} steps each (guided loss at "
          f"{args.guidance:g}); step = one UNet "
          f"call, 1 thread, median of {args.runs}, interleaved with the full "
          f"UNet; accuracy on {args.count} held-out captions")
    print("| tau | widths | parameters | step ms b2 (full) | speedup b2 | speedup b8 | colour "
          "(full) | shape (full) | SSIM to full |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tau']:g} | {r['widths']} | {r['parameters'] / 1e6:.2f} M "
              f"({r['parameters'] / r['base_parameters']:.0%}) | {r['step_b2']['slim_ms']:.1f} "
              f"({r['step_b2']['full_ms']:.1f}) | {r['step_b2']['speedup']:.2f}x | "
              f"{r['step_b8']['speedup']:.2f}x | {r['slim_colour']:.0%} ({r['full_colour']:.0%}) "
              f"| {r['slim_shape']:.0%} ({r['full_shape']:.0%}) | {r['ssim_to_full']:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": date.today().isoformat(), "models": str(models),
                               "model": args.model, "steps": args.steps, "guidance": args.guidance,
                               "count": args.count,
                               "threads": args.threads, "step_threads": 1, "cpus": os.cpu_count(),
                               "load_average_end": list(os.getloadavg()), "rows": rows},
                              indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
