"""What the denoiser is asked to do for one request, as domain types (no protos).

A :class:`DenoiseJob` holds what every request has (conditioning, size, steps, seed, the
sampling schedule); what is attached to it (LoRAs, ControlNets, a CFG partner, a template
edit, IP-Adapters, previews) lives in ``addons``, one typed spec per add-on, keyed by the
add-on's name in :mod:`services.denoiser.addons`. The core knows no add-on.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DenoiseJob:
    request_id: str
    model: str
    prompt_embeds: torch.Tensor                   # [1, tokens, dim]
    negative_prompt_embeds: torch.Tensor | None
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    strength: float = 1.0
    image_moments: torch.Tensor | None = None     # VAE moments of the init image
    mask: torch.Tensor | None = None              # processed mask [1, 1, H, W]
    masked_image_moments: torch.Tensor | None = None
    scheduler: str = ""                           # a name from services.common.schedulers
    num_images: int = 1                           # image i is drawn from seed + i
    # SDXL-shaped UNets: pooled text embeddings and the added time ids, as the SDXL
    # pipelines pass them in added_cond_kwargs.
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    add_time_ids: torch.Tensor | None = None
    addons: dict[str, Any] = field(default_factory=dict)  # add-on name -> its spec
    deadline: float | None = None                 # time.monotonic() value
    priority: int = 0                             # waiting jobs start highest first
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]


@dataclass(frozen=True)
class StepEvent:
    step: int
    total_steps: int
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. "preview_latents"

    @property
    def preview_latents(self) -> torch.Tensor | None:
        return self.outputs.get("preview_latents")


@dataclass(frozen=True)
class FinalEvent:
    latents: torch.Tensor                         # [num_images, C, h, w]
    steps: int
    queue_ms: float
    run_ms: float
    batch_peak: int = 1
    metadata: dict[str, str] = field(default_factory=dict)  # what the add-ons report

    @property
    def lora_step(self) -> int | None:
        """Step at which the LoRAs joined (BAL); None without LoRAs."""
        step = self.metadata.get("lora_joined_step")
        return int(step) if step is not None else None


@dataclass(frozen=True)
class ErrorEvent:
    error: Exception
