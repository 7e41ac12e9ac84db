"""The UNet halves as CUDA graphs, captured once per input shape (GPU path only).

Each shape key (batch rows, latent size, text length, added conditioning) gets
a down+mid graph, whose static outputs are the inputs of its up graphs: one
without ControlNet residuals and one with them (reading static residual
buffers), each captured the first time it is needed. A shape's graphs share a
memory pool and always replay in order (down, then one up). A call copies its
inputs into the static buffers and replays. LoRA patches change the weights in
place, so the graphs see them without a recapture. The first call of a shape
runs eagerly; up to ``max_shapes`` shapes are captured, later ones stay eager.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from services.denoiser.unet_halves import AddedCond, DownMidOut, UnetHalves

log = logging.getLogger("dfleet.denoiser")

WARMUP_RUNS = 2
# Other threads (a co-located ControlNet, LoRA loaders) keep using CUDA during a capture.
CAPTURE_MODE = "thread_local"
Residuals = tuple[list[torch.Tensor], torch.Tensor]


@dataclass
class GraphedDownMid(DownMidOut):
    """Down+mid outputs, with what the up half needs to find its graph (or run eagerly)."""

    entry: _Shape | None = None
    inputs: tuple[Any, ...] = ()


@dataclass
class _Up:
    graph: Any
    residuals: Residuals | None
    noise: torch.Tensor


@dataclass
class _Shape:
    pool: Any
    sample: torch.Tensor
    timestep: torch.Tensor
    embeds: torch.Tensor
    added: AddedCond | None
    down_graph: Any
    out: DownMidOut
    ups: dict[bool, _Up] = field(default_factory=dict)


def _key(sample: torch.Tensor, embeds: torch.Tensor, added: AddedCond | None) -> tuple[Any, ...]:
    extra = tuple(sorted((k, tuple(v.shape)) for k, v in (added or {}).items()))
    return (tuple(sample.shape), tuple(embeds.shape), extra, sample.dtype)


def _warm_up(run: Any) -> None:
    """Runs ``run`` on a side stream first, as graph capture requires."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RUNS):
            run()
    torch.cuda.current_stream().wait_stream(side)


class GraphedHalves:
    """Same interface as :class:`UnetHalves`."""

    def __init__(self, halves: UnetHalves, max_shapes: int = 8) -> None:
        if halves.device.type != "cuda":
            raise ValueError("CUDA graphs need the UNet on a CUDA device")
        self.halves = halves
        self.max_shapes = max_shapes
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self._failed: set[tuple[Any, ...]] = set()
        self.replays = 0
        self.eager_runs = 0

    def down_mid(self, sample: torch.Tensor, timestep: torch.Tensor,
                 encoder_hidden_states: torch.Tensor,
                 added_cond: AddedCond | None = None) -> DownMidOut:
        entry = self._shapes.get(_key(sample, encoder_hidden_states, added_cond))
        if entry is None:
            self.eager_runs += 1
            out = self.halves.down_mid(sample, timestep, encoder_hidden_states, added_cond)
            return GraphedDownMid(out.sample, out.skips, out.emb, out.encoder_hidden_states,
                                  out.forward_upsample_size,
                                  inputs=(sample, timestep, encoder_hidden_states, added_cond))
        entry.sample.copy_(sample)
        entry.timestep.copy_(timestep)
        entry.embeds.copy_(encoder_hidden_states)
        if entry.added is not None and added_cond is not None:
            for name, static in entry.added.items():
                static.copy_(added_cond[name])
        entry.down_graph.replay()
        self.replays += 1
        out = entry.out
        return GraphedDownMid(out.sample, out.skips, out.emb, out.encoder_hidden_states,
                              out.forward_upsample_size, entry=entry)

    def up(self, state: DownMidOut, down_residuals: list[torch.Tensor] | None = None,
           mid_residual: torch.Tensor | None = None) -> torch.Tensor:
        residuals = (down_residuals, mid_residual) \
            if down_residuals is not None and mid_residual is not None else None
        entry = state.entry if isinstance(state, GraphedDownMid) else None
        if entry is None:
            noise = self.halves.up(state, down_residuals, mid_residual)
            if isinstance(state, GraphedDownMid) and state.inputs:
                self._capture_shape(*state.inputs)
            return noise
        up = entry.ups.get(residuals is not None) or self._capture_up(entry, residuals)
        if up is None:
            self.eager_runs += 1
            return self.halves.up(state, down_residuals, mid_residual)
        if residuals is not None and up.residuals is not None:
            for static, value in zip(up.residuals[0], residuals[0], strict=True):
                static.copy_(value)
            up.residuals[1].copy_(residuals[1])
        up.graph.replay()
        return up.noise.clone()

    def _capture_shape(self, sample: torch.Tensor, timestep: torch.Tensor,
                       embeds: torch.Tensor, added: AddedCond | None) -> None:
        key = _key(sample, embeds, added)
        if key in self._shapes or key in self._failed or len(self._shapes) >= self.max_shapes:
            return
        halves = self.halves
        pool = torch.cuda.graph_pool_handle()
        static = (sample.clone(), timestep.clone(), embeds.clone(),
                  {k: v.clone() for k, v in added.items()} if added else None)
        try:
            _warm_up(lambda: halves.down_mid(*static))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode=CAPTURE_MODE):
                out = halves.down_mid(*static)
        except RuntimeError:
            log.warning("CUDA graph capture failed for %s; it runs eagerly", key[:2],
                        exc_info=True)
            self._failed.add(key)
            return
        self._shapes[key] = _Shape(pool, *static, down_graph=graph, out=out)
        log.info("captured the UNet's down+mid graph for %s", key[:2])

    def _capture_up(self, entry: _Shape, residuals: Any) -> _Up | None:
        halves = self.halves
        static: Residuals | None = None
        if residuals is not None:
            static = ([d.clone() for d in residuals[0]], residuals[1].clone())
        args = static or (None, None)
        try:
            _warm_up(lambda: halves.up(entry.out, *args))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=entry.pool, capture_error_mode=CAPTURE_MODE):
                noise = halves.up(entry.out, *args)
        except RuntimeError:
            log.warning("CUDA graph capture of the up half failed; it runs eagerly",
                        exc_info=True)
            return None
        up = _Up(graph, static, noise)
        entry.ups[residuals is not None] = up
        return up
