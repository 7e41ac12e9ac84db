"""python -m services.controlnet"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import torch

from diffusion.v1 import controlnet_pb2_grpc
from services.common.model_store import ModelStore
from services.common.server import Heartbeat, ServiceRuntime, init_process, serve
from services.common.settings import ServiceSettings, parse_settings, setting
from services.controlnet.engine import ControlNetEngine
from services.controlnet.servicer import ControlNetServicer

ROLE = "controlnet"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ControlNetSettings(ServiceSettings):
    """ControlNet: per-step residuals for the denoisers paired with it."""

    budget_mb: int = setting("memory for resident ControlNets, MiB (LRU beyond it)",
                             default=8192)
    device: str = setting("torch device: cpu, cuda, cuda:N", default="cpu")
    dtype: str = setting("weights: float32, float16 or bfloat16", default="float32")
    cuda_graphs: bool = setting("capture each ControlNet as CUDA graphs per shape (CUDA only)",
                                default=False)
    step_ring: bool = setting("take the shared-memory step rings denoisers on this host offer "
                              "(off: every step is a gRPC message)", default=True)

    def validate(self) -> None:
        super().validate()
        if self.budget_mb <= 0:
            raise ValueError(f"budget_mb={self.budget_mb} must be positive")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ValueError(f"cuda_graphs=True needs a CUDA device, not device={self.device!r}")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(ControlNetSettings, ROLE, argv)
    init_process(settings, ROLE)
    engine = ControlNetEngine(ModelStore(settings.models_dir), settings.budget_mb << 20,
                              settings.device, DTYPES[settings.dtype], settings.cuda_graphs)

    def add(server: grpc.Server, runtime: ServiceRuntime) -> list[str]:
        controlnet_pb2_grpc.add_ControlNetServicer_to_server(
            ControlNetServicer(engine, runtime, settings.step_ring), server)
        return ["diffusion.v1.ControlNet"]

    serve(ROLE, settings, add, Heartbeat(models=engine.names))


if __name__ == "__main__":
    main()
