"""A mask-aware UNet forward: each block runs on the edit's region only, or on every token.

Blocks, in order: ``conv_in``, each down block, the mid block, each up block,
the output head. A *sparse* block computes its outputs at the region R of
its level (see :mod:`services.denoiser.edit_regions`) and reads everything
else from the template's cached activations; a *dense* block is the plain
diffusers module on every token, its input completed from the cache where
the previous block left it sparse. With every block dense this is exactly
``UNet2DConditionModel.forward``; with every block sparse it computes only
R (plus the convolution halos) and takes the UNet output outside R from the
cache. Which blocks run sparse is the planner's choice
(:mod:`services.denoiser.cache_loader`).

The UNet must be SD-shaped: ``CrossAttnDownBlock2D`` / ``DownBlock2D`` /
``UNetMidBlock2DCrossAttn`` / ``UpBlock2D`` / ``CrossAttnUpBlock2D`` without
class or added embeddings; :func:`supports` says whether it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from services.denoiser import masked_units as units
from services.denoiser.activation_recorder import EPS, HEAD, tokens
from services.denoiser.edit_regions import RegionPlan

CONV_IN, DOWN, MID, UP, OUT = "conv_in", "down", "mid", "up", "head"


@dataclass(frozen=True)
class Unit:
    """One cached module: its kind, module path and the level whose tokens it reads."""

    kind: str   # "resnet", "transformer", "down", "up", "head", "eps"
    name: str
    level: int


@dataclass(frozen=True)
class Block:
    kind: str
    name: str
    level: int                 # level of its input
    units: tuple[Unit, ...] = ()
    inputs: tuple[str, ...] = field(default=())  # modules whose cached "x" completes its input

    @property
    def label(self) -> str:
        return self.name or self.kind


def supports(unet: Any) -> bool:
    config = unet.config
    return (config.class_embed_type is None and config.addition_embed_type is None
            and config.time_cond_proj_dim is None and not config.center_input_sample
            and unet.conv_norm_out is not None and unet.time_embed_act is None
            and all(getattr(b, "resnets", None) is not None for b in unet.down_blocks))


def describe(unet: Any) -> list[Block]:
    """The UNet as a list of blocks, each with the cached units it reads."""
    blocks = [Block(CONV_IN, "conv_in", 0)]
    level = 0

    def unit_list(prefix: str, block: Any, level: int) -> list[Unit]:
        found: list[Unit] = []
        for j, _ in enumerate(block.resnets):
            found.append(Unit("resnet", f"{prefix}.resnets.{j}", level))
            if getattr(block, "attentions", None) is not None and j < len(block.attentions):
                found.append(Unit("transformer", f"{prefix}.attentions.{j}", level))
        return found

    for i, block in enumerate(unet.down_blocks):
        prefix = f"down_blocks.{i}"
        found = unit_list(prefix, block, level)
        if block.downsamplers:
            found.append(Unit("down", f"{prefix}.downsamplers.0", level))
        blocks.append(Block(DOWN, prefix, level, tuple(found), (f"{prefix}.resnets.0",)))
        level += 1 if block.downsamplers else 0
    mid = [Unit("resnet", "mid_block.resnets.0", level)]
    for j, _ in enumerate(unet.mid_block.attentions):
        mid += [Unit("transformer", f"mid_block.attentions.{j}", level),
                Unit("resnet", f"mid_block.resnets.{j + 1}", level)]
    blocks.append(Block(MID, "mid_block", level, tuple(mid), ("mid_block.resnets.0",)))
    for i, block in enumerate(unet.up_blocks):
        prefix = f"up_blocks.{i}"
        found = unit_list(prefix, block, level)
        if block.upsamplers:
            found.append(Unit("up", f"{prefix}.upsamplers.0", level))
        inputs = tuple(f"{prefix}.resnets.{j}" for j in range(len(block.resnets)))
        blocks.append(Block(UP, prefix, level, tuple(found), inputs))
        level -= 1 if block.upsamplers else 0
    blocks.append(Block(OUT, HEAD, level, (Unit("head", HEAD, level), Unit("eps", EPS, level)),
                        (HEAD,)))
    return blocks


class Act:
    """A hidden state: dense ``[B, C, H, W]`` (every token fresh) or fresh at its level's R."""

    def __init__(self, level: int, dense: torch.Tensor | None = None,
                 fresh: torch.Tensor | None = None) -> None:
        self.level, self.dense, self.fresh = level, dense, fresh

    @property
    def channels(self) -> int:
        return int(self.dense.shape[1] if self.dense is not None else self.fresh.shape[1])  # type: ignore[union-attr]

    def at_region(self, plan: RegionPlan) -> torch.Tensor:
        if self.fresh is not None:
            return self.fresh
        assert self.dense is not None
        flat = tokens(self.dense).reshape(-1, self.dense.shape[1])
        return flat.index_select(0, plan.levels[self.level].region.flat)

    def full(self, plan: RegionPlan, background: torch.Tensor) -> torch.Tensor:
        """Dense NCHW; ``background`` ``[rows, H*W, >=C]`` supplies the tokens outside R."""
        if self.dense is not None:
            return self.dense
        assert self.fresh is not None
        grid = plan.levels[self.level].region.grid
        flat = background.reshape(-1, background.shape[-1]).to(self.fresh.dtype)
        flat = flat.index_copy(0, plan.levels[self.level].region.flat, self.fresh)
        return flat.reshape(grid.rows, grid.height, grid.width, -1).permute(0, 3, 1, 2).contiguous()


BlockCaches = dict[str, dict[str, torch.Tensor]]  # unit name -> entries (see masked_units)
Backgrounds = dict[str, torch.Tensor]             # module -> cached full input [rows, HW, C]


@dataclass
class StepInputs:
    sample: torch.Tensor        # [B, in_channels, h, w] full UNet input
    timesteps: torch.Tensor     # [B]
    encoder: torch.Tensor       # [B, tokens, dim]


class MaskedUnet:
    def __init__(self, unet: Any) -> None:
        self.unet = unet
        self.blocks = describe(unet)

    def forward(self, step: StepInputs, plan: RegionPlan, sparse: list[bool],
                load: Callable[[int], tuple[BlockCaches, Backgrounds]],
                timer: Callable[[int, float], None] | None = None) -> torch.Tensor:
        """Noise prediction ``[B, C_out, h, w]``; ``load(i)`` waits for block i's cache."""
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=step.sample,
                                                      timestep=step.timesteps), None)
        skips: list[Act] = []
        h: Act | None = None
        for index, block in enumerate(self.blocks):
            caches, backgrounds = load(index)
            started = time.perf_counter()
            if block.kind == CONV_IN:
                h = self._conv_in(step.sample, plan, sparse[index])
                skips.append(h)
            elif block.kind == DOWN:
                assert h is not None
                h, outs = self._down(block, h, emb, step.encoder, plan, sparse[index], caches,
                                     backgrounds)
                skips.extend(outs)
            elif block.kind == MID:
                assert h is not None
                h = self._mid(block, h, emb, step.encoder, plan, sparse[index], caches,
                              backgrounds)
            elif block.kind == UP:
                assert h is not None
                count = len(unet.get_submodule(block.name).resnets)
                res, skips = skips[-count:], skips[:-count]
                h = self._up(block, h, res, emb, step.encoder, plan, sparse[index], caches,
                             backgrounds)
            else:
                assert h is not None
                out = self._head(h, plan, sparse[index], caches, backgrounds)
            if timer is not None:
                timer(index, time.perf_counter() - started)
        return out

    def _conv_in(self, sample: torch.Tensor, plan: RegionPlan, sparse: bool) -> Act:
        if not sparse:
            return Act(0, dense=self.unet.conv_in(sample))
        gather = plan.conv_in
        values = tokens(sample).reshape(-1, sample.shape[1]).index_select(0, gather.src)
        return Act(0, fresh=units.conv(self.unet.conv_in, gather, values))

    def _down(self, block: Block, h: Act, emb: torch.Tensor, encoder: torch.Tensor,
              plan: RegionPlan, sparse: bool, c: BlockCaches, bg: Backgrounds
              ) -> tuple[Act, list[Act]]:
        module = self.unet.get_submodule(block.name)
        level = block.level
        if not sparse:
            x = h.full(plan, bg.get(block.inputs[0], _none()))
            if getattr(module, "has_cross_attention", False):
                x, res = module(x, emb, encoder_hidden_states=encoder)
            else:
                x, res = module(x, emb)
            outs = [Act(level, dense=r) for r in res[:len(module.resnets)]]
            if module.downsamplers:
                outs.append(Act(level + 1, dense=res[-1]))
            return Act(outs[-1].level, dense=x), outs
        x = h.at_region(plan)
        lp = plan.levels[level]
        outs = []
        for unit in block.units:
            sub = self.unet.get_submodule(unit.name)
            if unit.kind == "resnet":
                x = units.resnet(sub, x, emb, lp, c[unit.name])
            elif unit.kind == "transformer":
                x = units.transformer(sub, x, encoder, lp, c[unit.name])
            else:
                x = units.downsample(sub, x, plan.downs[level], plan.down_inputs[level],
                                     c[unit.name])
                level += 1
                outs.append(Act(level, fresh=x))
                continue
            if unit.kind == "transformer" or not _followed_by_attention(block, unit):
                outs.append(Act(level, fresh=x))
        return Act(level, fresh=x), outs

    def _mid(self, block: Block, h: Act, emb: torch.Tensor, encoder: torch.Tensor,
             plan: RegionPlan, sparse: bool, c: BlockCaches, bg: Backgrounds) -> Act:
        module = self.unet.mid_block
        if not sparse:
            x = h.full(plan, bg.get(block.inputs[0], _none()))
            return Act(block.level, dense=module(x, emb, encoder_hidden_states=encoder))
        x = h.at_region(plan)
        lp = plan.levels[block.level]
        for unit in block.units:
            sub = self.unet.get_submodule(unit.name)
            x = (units.resnet(sub, x, emb, lp, c[unit.name]) if unit.kind == "resnet"
                 else units.transformer(sub, x, encoder, lp, c[unit.name]))
        return Act(block.level, fresh=x)

    def _up(self, block: Block, h: Act, res: list[Act], emb: torch.Tensor,
            encoder: torch.Tensor, plan: RegionPlan, sparse: bool, c: BlockCaches,
            bg: Backgrounds) -> Act:
        module = self.unet.get_submodule(block.name)
        level = block.level
        if not sparse:
            hidden = h.full(plan, bg.get(block.inputs[0], _none())[..., :h.channels]
                            if h.dense is None else _none())
            skips = tuple(s.full(plan, bg[name][..., -s.channels:] if s.dense is None else _none())
                          for s, name in zip(reversed(res), block.inputs, strict=True))[::-1]
            kwargs: dict[str, Any] = dict(hidden_states=hidden, temb=emb,
                                          res_hidden_states_tuple=skips)
            if getattr(module, "has_cross_attention", False):
                kwargs["encoder_hidden_states"] = encoder
            out = module(**kwargs)
            return Act(level - (1 if module.upsamplers else 0), dense=out)
        x = h.at_region(plan)
        lp = plan.levels[level]
        for unit in block.units:
            sub = self.unet.get_submodule(unit.name)
            if unit.kind == "resnet":
                x = torch.cat([x, res.pop().at_region(plan)], dim=1)
                x = units.resnet(sub, x, emb, lp, c[unit.name])
            elif unit.kind == "transformer":
                x = units.transformer(sub, x, encoder, lp, c[unit.name])
            else:
                x = units.upsample(sub, x, plan.ups[level - 1], plan.up_inputs[level - 1],
                                   c[unit.name])
                level -= 1
        return Act(level, fresh=x)

    def _head(self, h: Act, plan: RegionPlan, sparse: bool, c: BlockCaches,
              bg: Backgrounds) -> torch.Tensor:
        unet = self.unet
        if not sparse:
            x = h.full(plan, bg.get(HEAD, _none()))
            return unet.conv_out(unet.conv_act(unet.conv_norm_out(x)))
        eps = units.head(unet, h.at_region(plan), plan.levels[0], c[HEAD])
        return Act(0, fresh=eps).full(plan, c[EPS]["full"])


def _followed_by_attention(block: Block, unit: Unit) -> bool:
    i = block.units.index(unit)
    return i + 1 < len(block.units) and block.units[i + 1].kind == "transformer"


def _none() -> torch.Tensor:
    return torch.empty(0)
