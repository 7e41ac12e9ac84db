"""A ControlNet as CUDA graphs, captured once per input shape (GPU path only).

The graph computes the residuals at conditioning scale 1; the caller scales
them, which is the multiplication the model itself would do. Up to
``max_shapes`` shapes are captured; later ones run eagerly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("dfleet.controlnet")

Residuals = tuple[list[torch.Tensor], torch.Tensor]
WARMUP_RUNS = 2
# Other threads (a co-located ControlNet, LoRA loaders) keep using CUDA during a capture.
CAPTURE_MODE = "thread_local"


@dataclass
class _Captured:
    inputs: dict[str, Any]
    graph: Any
    down: list[torch.Tensor]
    mid: torch.Tensor


def _key(inputs: dict[str, Any]) -> tuple[Any, ...]:
    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return tuple(sorted((k, tuple(v.shape)) for k, v in value.items()))
        return tuple(value.shape) if value is not None else None
    return tuple((name, shape(value)) for name, value in sorted(inputs.items()))


class GraphedControlNet:
    def __init__(self, model: Any, max_shapes: int = 8) -> None:
        self.model = model
        self.max_shapes = max_shapes
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple[Any, ...], _Captured] = {}
        self._failed: set[tuple[Any, ...]] = set()
        self.replays = 0

    def _run(self, inputs: dict[str, Any]) -> Residuals:
        down, mid = self.model(inputs["sample"], inputs["timestep"],
                               encoder_hidden_states=inputs["embeds"],
                               controlnet_cond=inputs["cond"], conditioning_scale=1.0,
                               added_cond_kwargs=inputs.get("added"), guess_mode=False,
                               return_dict=False)
        return list(down), mid

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor,
                 cond: torch.Tensor, added: dict[str, torch.Tensor] | None = None) -> Residuals:
        """Residuals at scale 1; the returned tensors are the caller's."""
        # a static input must live on the device: nothing may be copied in during a replay
        inputs: dict[str, Any] = {"sample": sample,
                                  "timestep": timestep.reshape(1).to(sample.device),
                                  "embeds": embeds, "cond": cond}
        if added is not None:
            inputs["added"] = added
        key = _key(inputs)
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._failed and len(self._graphs) < self.max_shapes:
                entry = self._capture(key, inputs)
            if entry is None:
                down, mid = self._run(inputs)
                return [d.clone() for d in down], mid.clone()
        for name, value in inputs.items():
            static = entry.inputs[name]
            if isinstance(value, dict):
                for k, v in value.items():
                    static[k].copy_(v)
            else:
                static.copy_(value)
        entry.graph.replay()
        self.replays += 1
        return [d.clone() for d in entry.down], entry.mid.clone()

    def _capture(self, key: tuple[Any, ...], inputs: dict[str, Any]) -> _Captured | None:
        static = {name: ({k: v.clone() for k, v in value.items()} if isinstance(value, dict)
                         else value.clone()) for name, value in inputs.items()}
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self._run(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode=CAPTURE_MODE):
                down, mid = self._run(static)
        except RuntimeError:
            log.warning("ControlNet graph capture failed for %s; running eagerly", key,
                        exc_info=True)
            self._failed.add(key)
            return None
        entry = _Captured(static, graph, down, mid)
        self._graphs[key] = entry
        return entry
