"""The UNet halves as CUDA graphs, captured once per input shape (GPU path only).

Each shape key (batch rows, latent size, text length, ControlNet or not) gets
two graphs that share one memory pool: down+mid, whose static outputs are the
up graph's inputs, and up, which also reads static ControlNet residual
buffers. A call copies its inputs into the static buffers and replays. LoRA
patches change the weights in place, so the graphs see them without a
recapture. Up to ``max_shapes`` keys are captured; later shapes run eagerly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from services.denoiser.unet_halves import AddedCond, DownMidOut, UnetHalves

log = logging.getLogger("dfleet.denoiser")

WARMUP_RUNS = 2


@dataclass
class GraphedDownMid(DownMidOut):
    key: tuple[Any, ...] = ()


@dataclass
class _Captured:
    sample: torch.Tensor
    timestep: torch.Tensor
    embeds: torch.Tensor
    added: AddedCond | None
    down_graph: Any
    out: DownMidOut
    residuals: tuple[list[torch.Tensor], torch.Tensor] | None
    up_graph: Any
    noise: torch.Tensor


def _key(sample: torch.Tensor, embeds: torch.Tensor, added: AddedCond | None,
         with_residuals: bool) -> tuple[Any, ...]:
    extra = tuple(sorted((k, tuple(v.shape)) for k, v in (added or {}).items()))
    return (tuple(sample.shape), tuple(embeds.shape), extra, with_residuals, sample.dtype)


class GraphedHalves:
    """Same interface as :class:`UnetHalves`; falls back to it for shapes not captured."""

    def __init__(self, halves: UnetHalves, max_shapes: int = 8) -> None:
        if halves.device.type != "cuda":
            raise ValueError("CUDA graphs need the UNet on a CUDA device")
        self.halves = halves
        self.max_shapes = max_shapes
        self.pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[tuple[Any, ...], _Captured] = {}
        self._failed: set[tuple[Any, ...]] = set()
        self.replays = 0
        self.eager_runs = 0

    def down_mid(self, sample: torch.Tensor, timestep: torch.Tensor,
                 encoder_hidden_states: torch.Tensor,
                 added_cond: AddedCond | None = None) -> DownMidOut:
        # The up half decides whether residuals join; a graph per case is captured lazily,
        # so down+mid runs as the "with residuals" entry only when that entry exists.
        key = _key(sample, encoder_hidden_states, added_cond, True)
        plain = _key(sample, encoder_hidden_states, added_cond, False)
        entry = self._graphs.get(key) or self._graphs.get(plain)
        if entry is None:
            self.eager_runs += 1
            out = self.halves.down_mid(sample, timestep, encoder_hidden_states, added_cond)
            return GraphedDownMid(out.sample, out.skips, out.emb, out.encoder_hidden_states,
                                  out.forward_upsample_size,
                                  key=("eager", sample, timestep, encoder_hidden_states,
                                       added_cond))
        chosen = key if key in self._graphs else plain
        self._copy_inputs(entry, sample, timestep, encoder_hidden_states, added_cond)
        entry.down_graph.replay()
        self.replays += 1
        out = entry.out
        return GraphedDownMid(out.sample, out.skips, out.emb, out.encoder_hidden_states,
                              out.forward_upsample_size, key=chosen)

    def up(self, state: DownMidOut, down_residuals: list[torch.Tensor] | None = None,
           mid_residual: torch.Tensor | None = None) -> torch.Tensor:
        with_res = down_residuals is not None and mid_residual is not None
        key = state.key if isinstance(state, GraphedDownMid) else ()
        if key and key[0] == "eager":
            _, sample, timestep, embeds, added = key
            noise = self.halves.up(state, down_residuals, mid_residual)
            self._maybe_capture(sample, timestep, embeds, added, down_residuals, mid_residual)
            return noise
        entry = self._graphs.get(key)
        if entry is None or key[3] != with_res:
            # captured for the other case: finish this call eagerly from the graph's outputs
            self.eager_runs += 1
            return self.halves.up(state, down_residuals, mid_residual)
        if with_res:
            assert entry.residuals is not None and down_residuals is not None
            for static, value in zip(entry.residuals[0], down_residuals, strict=True):
                static.copy_(value)
            entry.residuals[1].copy_(mid_residual)  # type: ignore[arg-type]
        entry.up_graph.replay()
        return entry.noise.clone()

    def _copy_inputs(self, entry: _Captured, sample: torch.Tensor, timestep: torch.Tensor,
                     embeds: torch.Tensor, added: AddedCond | None) -> None:
        entry.sample.copy_(sample)
        entry.timestep.copy_(timestep)
        entry.embeds.copy_(embeds)
        if entry.added is not None and added is not None:
            for name, static in entry.added.items():
                static.copy_(added[name])

    def _maybe_capture(self, sample: torch.Tensor, timestep: torch.Tensor,
                       embeds: torch.Tensor, added: AddedCond | None,
                       down: list[torch.Tensor] | None, mid: torch.Tensor | None) -> None:
        with_res = down is not None and mid is not None
        key = _key(sample, embeds, added, with_res)
        if key in self._graphs or key in self._failed or len(self._graphs) >= self.max_shapes:
            return
        try:
            self._graphs[key] = self._capture(sample, timestep, embeds, added, down, mid)
            log.info("captured UNet graphs for %s", key[:4])
        except RuntimeError:
            log.warning("CUDA graph capture failed for %s; running it eagerly", key[:4],
                        exc_info=True)
            self._failed.add(key)

    def _capture(self, sample: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor,
                 added: AddedCond | None, down: list[torch.Tensor] | None,
                 mid: torch.Tensor | None) -> _Captured:
        halves = self.halves
        static_sample, static_t, static_embeds = sample.clone(), timestep.clone(), embeds.clone()
        static_added = {k: v.clone() for k, v in added.items()} if added else None
        residuals = ([d.clone() for d in down], mid.clone()) \
            if down is not None and mid is not None else None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                state = halves.down_mid(static_sample, static_t, static_embeds, static_added)
                halves.up(state, *(residuals or (None, None)))
        torch.cuda.current_stream().wait_stream(side)
        down_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(down_graph, pool=self.pool):
            out = halves.down_mid(static_sample, static_t, static_embeds, static_added)
        up_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(up_graph, pool=self.pool):
            noise = halves.up(out, *(residuals or (None, None)))
        return _Captured(static_sample, static_t, static_embeds, static_added, down_graph, out,
                         residuals, up_graph, noise)
