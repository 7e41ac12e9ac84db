"""Cache hit against miss: the LoRA cache tiers and the ControlNet replica's model cache.

LoRA: a real LoRA cache process serves a denoiser-side loader in this process.
"Miss" makes a LoRA ready on the device from storage (a fresh name, so neither
tier holds it: storage -> host shared memory -> parsed on the device);
"host hit" finds it in host shared memory (another denoiser on the node loaded
it); "device hit" finds it parsed already. Also the bare ``Prepare`` RPC, miss
and hit.

ControlNet: a real ControlNet process whose budget holds one ControlNet. The
time to open a step stream and get the first step's residuals, when the
ControlNet is resident (hit) and when the previous request used the other one,
so this one is loaded first (miss). Median of N after a warm-up.

    python bench/caches.py [--runs 5] [--rank 64]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import torch  # noqa: E402

from bench.bal import bench_models  # noqa: E402
from dfleet.local_fleet import wait_healthy  # noqa: E402
from diffusion.v1 import lora_cache_pb2, lora_cache_pb2_grpc  # noqa: E402
from services.common.channels import ChannelPool  # noqa: E402
from services.common.model_store import ModelStore  # noqa: E402
from services.common.transport import TensorExporter, TensorImporter, local_peer  # noqa: E402
from services.controlnet.cache import model_bytes  # noqa: E402
from services.denoiser.addons.lora import LoraSpec  # noqa: E402
from services.denoiser.controlnet_link import ControlNetLink  # noqa: E402
from services.denoiser.lora_loader import LoraDeviceCache, LoraLoader, service_fetch  # noqa: E402


@contextmanager
def service(role: str, models: Path, *flags: str) -> Iterator[str]:
    """One service process on a free port; yields its address."""
    port_file = Path(tempfile.mkdtemp()) / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", f"services.{role}", "--models-dir", str(models), "--port", "0",
         "--port-file", str(port_file), "--log-level", "WARNING", *flags],
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{role} did not start")
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        wait_healthy(address, 30)
        yield address
    finally:
        process.terminate()
        process.wait(15)


def timed(fn: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1e3


def lora_rows(models: Path, names: list[str], runs: int) -> list[dict[str, Any]]:
    rows = []
    with service("lora_cache", models) as address, grpc.insecure_channel(address) as channel:
        stub = lora_cache_pb2_grpc.LoraCacheStub(channel)
        channels, importer = ChannelPool(), TensorImporter()
        fetch = service_fetch(channels, importer)

        def prepare(name: str) -> Any:
            return stub.Prepare(lora_cache_pb2.PrepareLoraRequest(loras=[name]))

        def ready_on_device(name: str, loader: LoraLoader) -> Any:
            return loader.load([LoraSpec(name, 1.0, address)], "bench").result(timeout=60)

        fresh = iter(names)
        cases: dict[str, list[float]] = {k: [] for k in (
            "Prepare RPC, miss", "Prepare RPC, hit", "ready on device, miss (storage)",
            "ready on device, host hit", "ready on device, device hit")}
        for _ in range(runs + 1):
            cases["Prepare RPC, miss"].append(timed(prepare, next(fresh)))
            cases["Prepare RPC, hit"].append(timed(prepare, names[0]))
            loader = LoraLoader(fetch, LoraDeviceCache(1 << 30))
            cold = next(fresh)
            cases["ready on device, miss (storage)"].append(
                timed(ready_on_device, cold, loader))
            other = LoraLoader(fetch, LoraDeviceCache(1 << 30))  # a second denoiser
            cases["ready on device, host hit"].append(
                timed(ready_on_device, cold, other))
            cases["ready on device, device hit"].append(
                timed(ready_on_device, cold, loader))
            loader.close()
            other.close()
        channels.close()
        importer.close()
    for case, times in cases.items():
        rows.append(dict(cache="LoRA", case=case, ms=round(statistics.median(times[1:]), 2),
                         runs_ms=[round(t, 2) for t in times[1:]]))
    return rows


def controlnet_rows(models: Path, runs: int, size: int) -> list[dict[str, Any]]:
    store = ModelStore(models)
    one = model_bytes(store.load_controlnet("tiny-cn-a"))
    budget_mb = math.ceil(1.5 * one / (1 << 20))
    embeds = torch.randn(2, 77, store.load_controlnet("tiny-cn-a").config.cross_attention_dim)
    cond = torch.rand(2, 3, size, size)
    latents = torch.randn(2, 4, size // 8, size // 8)
    times: dict[str, list[float]] = {"first residuals, hit": [], "first residuals, miss": []}
    with service("controlnet", models, "--budget-mb", str(budget_mb)) as address:
        channels, importer = ChannelPool(), TensorImporter()
        exporter = TensorExporter("", role="bench")

        def first_residuals(name: str) -> None:
            link = ControlNetLink(channels, address, "bench", name, cond, embeds, exporter,
                                  importer, None, local_peer(), 60)
            link.send(0, latents, torch.tensor(500.0), 1.0)
            link.receive()
            link.close()

        for _ in range(runs + 1):
            first_residuals("tiny-cn-a")  # resident from here on
            times["first residuals, hit"].append(timed(first_residuals, "tiny-cn-a"))
            times["first residuals, miss"].append(timed(first_residuals, "tiny-cn-b"))
        exporter.close()
        importer.close()
        channels.close()
    return [dict(cache="ControlNet", case=case, ms=round(statistics.median(t[1:]), 2),
                 runs_ms=[round(x, 2) for x in t[1:]], budget_mb=budget_mb,
                 model_mb=round(one / (1 << 20), 1)) for case, t in times.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--models", default="bench/results/models-small")
    parser.add_argument("--out", default="bench/results/caches.json")
    args = parser.parse_args()
    copies = 2 * (args.runs + 1) + 1
    root, lora_bytes = bench_models(Path(args.models), Path(f"{args.models}-bal"), args.rank,
                                    copies)
    names = [f"bench-lora-r{args.rank}-{i}" for i in range(copies)]
    rows = lora_rows(root, names, args.runs) + controlnet_rows(root, args.runs, args.size)
    print(f"\ncache hit vs miss, small model, rank-{args.rank} LoRA ({lora_bytes / 1e6:.1f} MB), "
          f"ControlNet {rows[-1]['model_mb']} MiB in a {rows[-1]['budget_mb']} MiB budget, "
          f"median of {args.runs}, {os.cpu_count()} CPUs")
    print(f"{'cache':<12}{'case':<34}{'ms':>9}")
    for r in rows:
        print(f"{r['cache']:<12}{r['case']:<34}{r['ms']:>9}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(date=str(date.today()), cpus=os.cpu_count(), rank=args.rank,
                                   lora_bytes=lora_bytes, runs=args.runs, rows=rows), indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
