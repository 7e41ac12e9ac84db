"""Settings of the denoiser service."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from services.common.settings import ServiceSettings, setting
from services.denoiser.activation_cache import CacheSettings
from services.denoiser.template_editing import EditSettings

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DenoiserSettings(ServiceSettings):
    """Denoiser: runs the step loop of its requests in one shared batch."""

    max_batch_requests: int = setting("requests per UNet batch", default=8)
    max_active_requests: int = setting(
        "requests stepping at once; later ones wait first come first served; 0 = no limit "
        "(on a CPU, where batching saves little, 1 keeps each request's latency)", default=0)
    parallel_controlnet: bool = setting(
        "run the UNet's down and mid blocks while the ControlNets compute; off: wait for "
        "the residuals first (same result)", default=True)
    preload: str = setting("models whose UNets load before the replica serves, comma-separated; "
                           "'all' = every base and inpainting model; empty = on first use",
                           default="")
    device: str = setting("torch device of the UNet: cpu, cuda, cuda:N", default="cpu")
    dtype: str = setting("UNet weights: float32, float16 or bfloat16", default="float32")
    cuda_graphs: bool = setting("capture the UNet halves as CUDA graphs per shape (CUDA only)",
                                default=False)
    lora_device_budget_mb: int = setting("device memory for cached LoRA layers, MiB",
                                         default=1024)
    lora_load_threads: int = setting("threads fetching LoRAs in the background", default=2)
    profiles_dir: str = setting("BAL profiles folder; default: <models_dir>/profiles",
                                default="")
    activation_dir: str = setting(
        "template activation cache folder, shared by the node's denoisers (host memory "
        "when on tmpfs); made owner-only", default=f"/dev/shm/dfleet-activations-{os.getuid()}")
    activation_budget_mb: int = setting("bytes of template activations kept there, MiB",
                                        default=4096)
    activation_spill_dir: str = setting("local-disk folder for evicted template activations; "
                                        "empty = drop them", default="")
    activation_spill_mb: int = setting("bytes of spilled template activations, MiB",
                                       default=32768)
    activation_dtype: str = setting("dtype of cached activations: float16, float32, bfloat16",
                                    default="float16")
    edit_halo: int = setting("latent tokens recomputed around an edit's mask", default=1)

    def validate(self) -> None:
        super().validate()
        if self.max_batch_requests < 1:
            raise ValueError(f"max_batch_requests={self.max_batch_requests} must be >= 1")
        if self.max_active_requests < 0:
            raise ValueError(f"max_active_requests={self.max_active_requests} must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ValueError(f"cuda_graphs=True needs a CUDA device, not device={self.device!r}")
        if self.lora_device_budget_mb <= 0:
            raise ValueError(f"lora_device_budget_mb={self.lora_device_budget_mb} must be "
                             "positive")
        self.edit_settings().validate()
        if self.lora_load_threads < 1:
            raise ValueError(f"lora_load_threads={self.lora_load_threads} must be >= 1")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def edit_settings(self) -> EditSettings:
        return EditSettings(cache=CacheSettings(
            memory_dir=self.activation_dir, memory_bytes=self.activation_budget_mb << 20,
            spill_dir=self.activation_spill_dir, spill_bytes=self.activation_spill_mb << 20,
            dtype=self.activation_dtype), halo=self.edit_halo)
