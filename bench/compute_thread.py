"""Why every service runs its tensor work on one compute thread.

Times one UNet forward of the small model (CFG batch of 2, 128x128) on this CPU:
on the main thread; on a second thread after the main thread has run torch
work too (what happens when gRPC pool threads each run a model); and on a
:class:`~services.common.compute.ComputeThread` while the main thread only
waits. Prints a table of medians and writes JSON.

    python bench/compute_thread.py [--runs 20] [--out bench/results/compute_thread.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CASES = ("main", "second_thread_after_main", "compute_thread_only")


def forward_ms(forward: Callable[[], object], runs: int) -> list[float]:
    for _ in range(3):
        forward()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def one_case(case: str, models: str, runs: int) -> list[float]:
    """Runs in a fresh process, so the cases do not share an OpenMP runtime."""
    import diffusers
    import torch

    from services.common.compute import ComputeThread

    torch.set_grad_enabled(False)
    unet = diffusers.UNet2DConditionModel.from_pretrained(Path(models) / "tiny-sd" / "unet")
    sample = torch.randn(2, 4, 16, 16)
    embeds = torch.randn(2, 77, unet.config.cross_attention_dim)

    def forward() -> object:
        return unet(sample, 500, embeds)

    if case == "main":
        return forward_ms(forward, runs)
    if case == "second_thread_after_main":
        forward_ms(forward, 3)
        out: list[float] = []
        thread = threading.Thread(target=lambda: out.extend(forward_ms(forward, runs)))
        thread.start()
        thread.join()
        return out
    return ComputeThread().run(forward_ms, forward, runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--models", default="bench/results/models-small")
    parser.add_argument("--out", default="bench/results/compute_thread.json")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.models, args.runs)))
        return 0
    if not (Path(args.models) / "tree.json").exists():
        from services.common.tiny_model import write_tiny_model
        write_tiny_model(Path(args.models), seed=0, preset="small")
    rows = []
    for case in CASES:
        done = subprocess.run([sys.executable, __file__, "--case", case, "--models", args.models,
                               "--runs", str(args.runs)], capture_output=True, text=True,
                              check=True, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
        times = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(dict(case=case, median_ms=round(statistics.median(times), 1),
                         runs_ms=[round(t, 1) for t in times]))
    print(f"\nUNet forward, small model, batch 2, 128x128, median of {args.runs}, "
          f"{os.cpu_count()} CPUs")
    for row in rows:
        print(f"{row['case']:<28}{row['median_ms']:>8} ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), machine=platform.machine(),
                                   cpus=os.cpu_count(), runs=args.runs, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
