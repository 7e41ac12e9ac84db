"""What the denoiser is asked to do for one request, as domain types (no protos)."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ControlNetSpec:
    name: str
    address: str
    cond_image: torch.Tensor  # [1, 3, H, W] in [0, 1]
    scale: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    peer: Any = None          # PeerInfo of the ControlNet replica


@dataclass(frozen=True)
class LoraSpec:
    name: str
    scale: float
    address: str


@dataclass(frozen=True)
class CfgPartnerSpec:
    address: str
    peer: Any = None          # PeerInfo of the partner replica


@dataclass
class DenoiseJob:
    request_id: str
    model: str
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    strength: float = 1.0
    image_moments: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    masked_image_moments: torch.Tensor | None = None
    controlnets: list[ControlNetSpec] = field(default_factory=list)
    loras: list[LoraSpec] = field(default_factory=list)
    preview_every: int = 0
    deadline: float | None = None  # time.monotonic() value
    lora_async_steps: int = 0      # BAL bound K; -1 = the stored profile's; 0 = exact
    stale_controlnet: bool = False  # step t uses step t-1's ControlNet residuals
    cfg_partner: CfgPartnerSpec | None = None  # replica that runs the unconditional pass
    # SDXL-shaped UNets only (in-process callers; not on the wire): pooled text embeddings
    # and the added time ids, as the SDXL pipelines pass them in added_cond_kwargs.
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    add_time_ids: torch.Tensor | None = None
    edit: Any = None  # TemplateEdit (services.denoiser.template_editing): a template edit
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)

    @property
    def do_cfg(self) -> bool:
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class StepEvent:
    step: int
    total_steps: int
    preview_latents: torch.Tensor | None = None


@dataclass(frozen=True)
class FinalEvent:
    latents: torch.Tensor
    steps: int
    queue_ms: float
    run_ms: float
    batch_peak: int = 1
    lora_step: int | None = None   # step at which the LoRAs joined (BAL); None without LoRAs
    controlnet_wait_ms: float = 0.0  # time the step loop waited for ControlNet residuals


@dataclass(frozen=True)
class ErrorEvent:
    error: Exception
