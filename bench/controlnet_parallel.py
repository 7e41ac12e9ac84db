"""Denoiser step latency with ControlNets run serially, in parallel with the UNet, and stale.

Serial: the step loop waits for the ControlNet residuals, then runs the whole
UNet. Parallel (the service's default): the UNet's down and mid blocks run while
the ControlNet replicas compute; only the up blocks wait. Stale: step t uses
step t-1's residuals, so nothing waits for the ControlNet.

Two denoiser engines (parallel and serial) run in this process on one loaded
small model and talk over gRPC and shared memory to two real ControlNet
processes (so two ControlNets of a request run on two replicas); each service
uses ``--torch-threads`` threads. The cases are interleaved run by run, so
background load hits them alike. Per case: the step latency (the step loop's
run time over its steps) and of it the time spent waiting for residuals, which
is what running beside the UNet hides. Median of N after a warm-up.

The steps go through the shared-memory step ring (``--paths ring``, the
service's default on one host) or as gRPC messages with TensorRefs
(``--paths grpc``); ``--paths ring grpc`` measures both in one run, interleaved.

    python bench/controlnet_parallel.py [--runs 5] [--steps 20] [--torch-threads 1]
        [--paths ring grpc]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from contextlib import ExitStack
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.caches import service  # noqa: E402
from services.common.channels import ChannelPool  # noqa: E402
from services.common.model_store import ModelStore  # noqa: E402
from services.common.tiny_model import write_tiny_model  # noqa: E402
from services.common.transport import TensorExporter, TensorImporter, local_peer  # noqa: E402
from services.denoiser.addons.controlnet import (  # noqa: E402
    ControlNetRequest,
    ControlNetSpec,
)
from services.denoiser.controlnet_link import ControlNetLink  # noqa: E402
from services.denoiser.engine import DenoiserEngine  # noqa: E402
from services.denoiser.job import DenoiseJob  # noqa: E402
from services.denoiser.offline import encode_prompts, run  # noqa: E402
from services.denoiser.unet_models import unet_loader  # noqa: E402

CONTROLNETS = ("tiny-cn-a", "tiny-cn-b")
CASES = [(0, "none"), (1, "serial"), (1, "parallel"), (1, "stale"), (2, "serial"),
         (2, "parallel"), (2, "stale")]


def ensure_models(root: Path) -> Path:
    if not (root / "tree.json").exists():
        write_tiny_model(root, seed=0, preset="small")
    return root


class Bench:
    def __init__(self, store: ModelStore, addresses: list[str], size: int, steps: int) -> None:
        unets = unet_loader(store)
        self.engine = DenoiserEngine(unets.get)
        self.embeds = encode_prompts(store, "tiny-sd", ["a house by a lake", ""])
        self.addresses, self.size, self.steps = addresses, size, steps
        self.channels, self.importer = ChannelPool(), TensorImporter()
        self.exporter = TensorExporter("", role="bench")  # ControlNets release by piggyback

    def step(self, count: int, mode: str, path: str, seed: int) -> tuple[float, float]:
        """One request's step latency and residual wait per step, in ms."""
        positive, negative = self.embeds
        rows = torch.cat([negative, positive])
        specs, links = [], []
        for i, (name, address) in enumerate(zip(CONTROLNETS[:count], self.addresses,
                                                strict=False)):
            cond = torch.rand(1, 3, self.size, self.size,
                              generator=torch.Generator().manual_seed(7 + i))
            specs.append(ControlNetSpec(name, address, cond))
            links.append(ControlNetLink(self.channels, address, f"bench-{seed}", name,
                                        torch.cat([cond] * 2), rows, self.exporter,
                                        self.importer, local_peer(), local_peer(), 600,
                                        ring=path == "ring"))
        job = DenoiseJob(request_id=f"bench-{seed}", model="tiny-sd", prompt_embeds=positive,
                         negative_prompt_embeds=negative, width=self.size, height=self.size,
                         num_inference_steps=self.steps, guidance_scale=7.5, seed=seed,
                         addons={"controlnet": ControlNetRequest(tuple(specs),
                                                                 stale=mode == "stale")})
        final = run(self.engine, job, links, parallel_controlnet=mode != "serial")
        wait_ms = float(final.metadata["controlnet_wait_ms"])
        return final.run_ms / final.steps, wait_ms / final.steps

    def close(self) -> None:
        self.engine.stop()
        self.exporter.close()
        self.importer.close()
        self.channels.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per case")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per request")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads of this process and of each ControlNet process")
    parser.add_argument("--paths", nargs="+", choices=("ring", "grpc"), default=["ring"],
                        help="how steps reach the ControlNets: shared-memory step ring, gRPC "
                             "messages, or both (interleaved)")
    parser.add_argument("--models", default="bench/results/models-small",
                        help="model tree (written with the small preset when missing)")
    parser.add_argument("--out", default="bench/results/controlnet_parallel.json",
                        help="JSON results file")
    args = parser.parse_args()
    cases = [(count, mode, path) for path in args.paths for count, mode in CASES
             if count or path == args.paths[0]]
    models = ensure_models(Path(args.models))
    torch.set_num_threads(args.torch_threads)
    threads = ["--torch-threads", str(args.torch_threads)]
    times: dict[tuple[int, str, str], list[tuple[float, float]]] = {case: [] for case in cases}
    with ExitStack() as stack:
        addresses = [stack.enter_context(service("controlnet", models, *threads))
                     for _ in CONTROLNETS]
        bench = Bench(ModelStore(models), addresses, args.size, args.steps)
        stack.callback(bench.close)
        with torch.inference_mode():
            for case in cases:  # warm-up: first requests load and allocate
                bench.step(*case, seed=99)
            for run_index in range(args.runs):
                for case in cases:
                    times[case].append(bench.step(*case, seed=run_index))
    rows: list[dict[str, Any]] = []
    base = statistics.median(t for t, _ in times[(0, "none", args.paths[0])])
    for (count, mode, path), values in times.items():
        step = statistics.median(t for t, _ in values)
        rows.append(dict(controlnets=count, mode=mode, path=path if count else "",
                         step_ms=round(step, 1),
                         vs_base=round(step / base, 3),
                         wait_ms=round(statistics.median(w for _, w in values), 1),
                         runs_ms=[round(t, 1) for t, _ in values]))
    print(f"\ndenoiser step latency, small model {args.size}x{args.size}, {args.steps} steps, "
          f"{args.torch_threads} torch thread(s) per process, ControlNets in their own "
          f"processes, median of {args.runs}, {os.cpu_count()} CPUs")
    print(f"{'ControlNets':<13}{'mode':<10}{'path':<6}{'step ms':>9}{'vs base':>9}"
          f"{'waiting for residuals ms':>26}")
    for r in rows:
        print(f"{r['controlnets']:<13}{r['mode']:<10}{r['path']:<6}{r['step_ms']:>9}"
              f"{r['vs_base']:>9}{r['wait_ms']:>26}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), cpus=os.cpu_count(),
                                   torch_threads=args.torch_threads, steps=args.steps,
                                   size=args.size, runs=args.runs, paths=args.paths,
                                   loadavg=os.getloadavg(), rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
