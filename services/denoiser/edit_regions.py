"""Which tokens a masked edit computes at each resolution of the UNet, and what convolutions read.

Granularity is the latent token (one latent pixel = an 8x8 patch of the image).
A token is *masked* when any pixel of its patch is white in the edit's mask.
The edit's *region* R at the latent level is the masked tokens dilated by
``halo`` tokens (Chebyshev distance): tokens right at the mask border are
recomputed too, because they see the new content through every 3x3
convolution and differ most from the template. At each lower resolution a
token is in R when any of its 2x2 children is.

Inside a block a 3x3 convolution that must produce R reads a one-token ring
around it; a ResNet block's first convolution therefore runs on R dilated by
one and reads R dilated by two (the *convolution halo*). Those halo tokens are
computed for the block only; what the block reads outside R comes from the
template's cached activations.

Flat indices number tokens across the batch: ``row * H * W + y * W + x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

SAME, DOWN, UP = "same", "down", "up"


@dataclass(frozen=True)
class Grid:
    rows: int
    height: int
    width: int

    @property
    def tokens(self) -> int:
        return self.height * self.width

    def coords(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row, pos = flat // self.tokens, flat % self.tokens
        return row, pos // self.width, pos % self.width


@dataclass(frozen=True)
class Region:
    """A set of tokens of one grid, as a boolean map and as sorted flat indices."""

    grid: Grid
    mask: torch.Tensor  # [rows, H, W] bool

    @cached_property
    def flat(self) -> torch.Tensor:
        return torch.nonzero(self.mask.reshape(-1)).squeeze(1)

    @cached_property
    def row(self) -> torch.Tensor:
        return self.flat // self.grid.tokens

    @cached_property
    def counts(self) -> list[int]:
        return self.mask.reshape(self.grid.rows, -1).sum(1).tolist()

    @property
    def size(self) -> int:
        return int(self.flat.numel())

    def dilated(self, k: int) -> Region:
        if k == 0:
            return self
        grown = F.max_pool2d(self.mask[:, None].float(), 2 * k + 1, stride=1, padding=k)
        return Region(self.grid, grown[:, 0] > 0)

    def coarser(self) -> Region:
        grid = Grid(self.grid.rows, self.grid.height // 2, self.grid.width // 2)
        return Region(grid, F.max_pool2d(self.mask[:, None].float(), 2)[:, 0] > 0)


def slots(within: torch.Tensor, query: torch.Tensor, total: int) -> torch.Tensor:
    """Index of each ``query`` flat index inside the sorted ``within``; -1 where absent."""
    table = torch.full((total,), -1, dtype=torch.long)
    table[within] = torch.arange(within.numel())
    return table[query]


@dataclass(frozen=True)
class ConvGather:
    """A 3x3 convolution evaluated at ``out`` tokens only.

    ``src`` are the input tokens it reads (sorted flat indices of the input
    grid); ``taps[i, k]`` is the row of ``src`` that tap ``k`` (``ky * 3 + kx``)
    of output ``i`` reads, or ``len(src)`` for the zero padding.
    """

    out: torch.Tensor
    src: torch.Tensor
    taps: torch.Tensor

    @staticmethod
    def build(out: torch.Tensor, out_grid: Grid, in_grid: Grid, kind: str) -> ConvGather:
        row, y, x = out_grid.coords(out)
        dy = torch.arange(3).repeat_interleave(3) - 1
        dx = torch.arange(3).repeat(3) - 1
        if kind == DOWN:
            iy, ix = 2 * y[:, None] + dy, 2 * x[:, None] + dx
            valid = (iy >= 0) & (iy < in_grid.height) & (ix >= 0) & (ix < in_grid.width)
        else:
            iy, ix = y[:, None] + dy, x[:, None] + dx
            valid = (iy >= 0) & (iy < out_grid.height) & (ix >= 0) & (ix < out_grid.width)
            if kind == UP:  # nearest 2x upsampling, then the convolution
                iy, ix = iy.div(2, rounding_mode="floor"), ix.div(2, rounding_mode="floor")
        iy, ix = iy.clamp(0, in_grid.height - 1), ix.clamp(0, in_grid.width - 1)
        flat = row[:, None] * in_grid.tokens + iy * in_grid.width + ix
        src = torch.unique(flat[valid])
        taps = slots(src, flat.reshape(-1), in_grid.rows * in_grid.tokens).reshape(flat.shape)
        taps = torch.where(valid, taps, torch.full_like(taps, src.numel()))
        return ConvGather(out, src, taps)

    def apply(self, weight: torch.Tensor, bias: torch.Tensor | None,
              values: torch.Tensor) -> torch.Tensor:
        """``values``: ``[len(src), C_in]`` -> ``[len(out), C_out]``."""
        padded = torch.cat([values, values.new_zeros(1, values.shape[1])])
        patches = padded[self.taps.reshape(-1)].reshape(self.taps.shape[0], -1)
        kernel = weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0])
        out = patches @ kernel
        return out + bias if bias is not None else out


@dataclass(frozen=True)
class Assembly:
    """Input tokens ``src`` of a gather, split into fresh ones (in R) and cached ones (the ring)."""

    src: torch.Tensor
    fresh_rows: torch.Tensor   # rows of src that are in R
    fresh_from: torch.Tensor   # index into R's fresh values for each of those
    cached_rows: torch.Tensor  # rows of src outside R: their values come from the cache

    @staticmethod
    def build(src: torch.Tensor, region: Region) -> Assembly:
        total = region.grid.rows * region.grid.tokens
        where = slots(region.flat, src, total)
        fresh_rows = torch.nonzero(where >= 0).squeeze(1)
        cached_rows = torch.nonzero(where < 0).squeeze(1)
        return Assembly(src, fresh_rows, where[fresh_rows], cached_rows)

    @property
    def ring(self) -> torch.Tensor:
        """Flat indices of the tokens read from the cache."""
        return self.src[self.cached_rows]

    def combine(self, ring: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """Values at every ``src`` token: ``ring`` (cached, at :attr:`ring`) and ``fresh`` (R)."""
        out = fresh.new_empty((self.src.numel(), fresh.shape[1]))
        out[self.cached_rows] = ring.to(fresh.dtype)
        out[self.fresh_rows] = fresh.index_select(0, self.fresh_from)
        return out


@dataclass(frozen=True)
class ResnetGathers:
    conv2: ConvGather      # out R, reads R+1 (all computed by conv1)
    conv1: ConvGather      # out = conv2.src, reads R+2
    input: Assembly        # conv1's input: fresh in R, cached on the ring


class LevelPlan:
    """Region and gathers at one resolution."""

    def __init__(self, region: Region) -> None:
        self.region = region
        grid = region.grid
        conv2 = ConvGather.build(region.flat, grid, grid, SAME)
        conv1 = ConvGather.build(conv2.src, grid, grid, SAME)
        self.resnet = ResnetGathers(conv2, conv1, Assembly.build(conv1.src, region))
        self.ring = Assembly.build(conv2.src, region)  # a lone 3x3 conv: R and its ring


class RegionPlan:
    """Everything a masked UNet forward needs about which tokens to compute, for one batch."""

    def __init__(self, masks: torch.Tensor, rows_per_mask: list[int], halo: int,
                 levels: int) -> None:
        """``masks``: ``[requests, h, w]`` latent-level booleans (True = masked token)."""
        per_row = torch.cat([m[None].expand(r, -1, -1)
                             for m, r in zip(masks, rows_per_mask, strict=True)])
        grid = Grid(per_row.shape[0], per_row.shape[1], per_row.shape[2])
        region = Region(grid, per_row).dilated(halo)
        self.rows_per_request = rows_per_mask
        self.levels: list[LevelPlan] = []
        for level in range(levels):
            if level:
                region = region.coarser()
            self.levels.append(LevelPlan(region))
        fine = [lv.region for lv in self.levels[:-1]]
        coarse = [lv.region for lv in self.levels[1:]]
        self.downs = [ConvGather.build(c.flat, c.grid, f.grid, DOWN)
                      for f, c in zip(fine, coarse, strict=True)]
        self.down_inputs = [Assembly.build(g.src, f)
                            for g, f in zip(self.downs, fine, strict=True)]
        self.ups = [ConvGather.build(f.flat, f.grid, c.grid, UP)
                    for f, c in zip(fine, coarse, strict=True)]
        self.up_inputs = [Assembly.build(g.src, c) for g, c in zip(self.ups, coarse, strict=True)]
        first = self.levels[0].region
        self.conv_in = ConvGather.build(first.flat, first.grid, first.grid, SAME)

    def ratio(self, level: int = 0) -> float:
        region = self.levels[level].region
        return region.size / (region.grid.rows * region.grid.tokens)


def latent_mask(mask: torch.Tensor, vae_scale_factor: int) -> torch.Tensor:
    """``[1, 1, H, W]`` image mask (white = repaint) -> ``[h, w]`` bool: any pixel of the patch."""
    pooled = F.max_pool2d((mask > 0.5).float(), vae_scale_factor)
    return pooled[0, 0] > 0
