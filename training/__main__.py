"""``python -m training``: train the shapes model, evaluate it, build its slim tier.

    python -m training train --seed 0 --out assets/shapes-models    every stage, then export
    python -m training evaluate --models assets/shapes-models       accuracy per workflow
    python -m training slim --models assets/shapes-models --tau 0.75 the slimmed tier
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

DEFAULT_WORK = "build/shapes-train"
DEFAULT_OUT = "assets/shapes-models"
SUBMODULES = {"evaluate": "training.evaluate", "slim": "training.slim"}


def _steps(specs: list[str]) -> dict[str, int]:
    steps = {}
    for spec in specs:
        stage, _, count = spec.partition("=")
        if not count.isdigit():
            raise SystemExit(f"training: --steps wants STAGE=N, got {spec!r}")
        steps[stage] = int(count)
    return steps


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from training.export import export_tree
    from training.recipe import RECIPES, STAGES, run_stages, with_steps

    torch.set_num_threads(args.threads)
    try:
        recipe = with_steps(RECIPES[args.recipe], _steps(args.steps))
    except ValueError as e:
        raise SystemExit(f"training: --steps: {e}") from None
    stages = tuple(args.stages.split(",")) if args.stages else STAGES
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"training: --stages: unknown {sorted(unknown)}; "
                         f"stages: {','.join(STAGES)}")
    work = Path(args.work)
    started = time.monotonic()
    curves = run_stages(recipe, work, args.seed, stages)
    print(f"trained {', '.join(stages)} in {(time.monotonic() - started) / 60:.1f} min "
          f"(work folder {work})", file=sys.stderr)
    if args.no_export or set(stages) != set(STAGES):
        return 0
    command = "python -m training " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = {"command": command, "seed": args.seed, "recipe": recipe.to_dict(),
              "threads": args.threads, "loss_curves": curves}
    out = export_tree(work, Path(args.out), record)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train every stage (resuming from checkpoints) and export")
    p.add_argument("--seed", type=int, default=0, help="seeds the models' initialisation and "
                   "every batch; the shipped weights used 0")
    p.add_argument("--recipe", choices=("shipped", "quick"), default="shipped",
                   help="widths, steps and batch sizes (quick: toy widths, for tests)")
    p.add_argument("--steps", action="append", default=[], metavar="STAGE=N",
                   help="override a stage's step count (repeatable)")
    p.add_argument("--stages", default="", help="comma-separated stages to run (default all); "
                   "a later stage reads the earlier ones from the work folder")
    p.add_argument("--work", default=DEFAULT_WORK,
                   help="checkpoints and stage outputs; a rerun resumes from them")
    p.add_argument("--out", default=DEFAULT_OUT, help="models folder to write")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--no-export", action="store_true", help="train only")
    p.set_defaults(func=cmd_train)
    for name, module in SUBMODULES.items():
        sub.add_parser(name, help=f"see python -m {module} --help", add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBMODULES:
        import importlib

        return int(importlib.import_module(SUBMODULES[argv[0]]).main(argv[1:]))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
