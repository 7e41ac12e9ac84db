"""Timing shared by the GPU benchmarks (``gpu_workflow.py``, ``gpu_flux.py``): one plain
diffusers pipeline call with per-step marks, and the median of repeated runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_pipeline_call(pipe: Any, kwargs: dict[str, Any], lora_path: Path | None,
                        device: str) -> tuple[Any, dict[str, float]]:
    """Runs ``pipe(**kwargs)`` (loading and fusing ``lora_path`` first when given, as a
    user of the pipeline does per request); returns its images and the end-to-end and
    per-step milliseconds."""
    marks: list[float] = []

    def on_step(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        sync(device)
        marks.append(time.perf_counter())
        return tensors
    sync(device)
    start = time.perf_counter()
    if lora_path is not None:
        pipe.load_lora_weights(str(lora_path), adapter_name=lora_path.stem)
        pipe.fuse_lora()
    with torch.inference_mode():
        images = pipe(callback_on_step_end=on_step, **kwargs).images
    if lora_path is not None:
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
    sync(device)
    end = time.perf_counter()
    step = (marks[-1] - marks[0]) / max(1, len(marks) - 1)
    return images, {"end_to_end_ms": (end - start) * 1e3, "step_ms": step * 1e3}


def median_of(run_once: Callable[[], dict[str, float]], runs: int) -> dict[str, Any]:
    """The median of each figure over ``runs`` runs after one untimed warm-up run."""
    results = [run_once() for _ in range(runs + 1)][1:]
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in results), 1)
                           for k in results[0]}
    out["end_to_end_runs_ms"] = [round(r["end_to_end_ms"], 1) for r in results]
    return out
