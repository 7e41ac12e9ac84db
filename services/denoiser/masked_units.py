"""The UNet's units evaluated on a region of tokens, with the template's activations around it.

Each function mirrors one diffusers module (``ResnetBlock2D``,
``Transformer2DModel`` with its ``BasicTransformerBlock``s, ``Downsample2D``,
``Upsample2D``, the output head) and computes its output only at the region
R of its level. Values are token-major: ``[tokens, channels]``, tokens in the
order of the region's flat indices.

What a unit reads outside R comes from the cache the loader hands it (``c``):

* ``ring``: the cached input at the tokens a 3x3 convolution reads around R,
* ``m*`` / ``t*``: per-token GroupNorm moments (sum and sum of squares per
  group) at R and their per-row totals, so the statistics over the whole
  image combine the template's tokens outside R with the fresh ones inside,
* ``k{i}`` / ``v{i}``: the self-attention keys and values of every token;
  the queries of R attend to all of them, R's own replaced by fresh ones.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from services.denoiser.edit_regions import ConvGather, LevelPlan, Region

Cache = dict[str, torch.Tensor]


def moments(values: torch.Tensor, groups: int) -> torch.Tensor:
    """``[n, C]`` -> ``[n, 2G]``: per token and group, the sum and the sum of squares."""
    v = values.reshape(values.shape[0], groups, -1)
    return torch.cat([v.sum(-1), (v * v).sum(-1)], dim=1)


def group_stats(norm: torch.nn.GroupNorm, fresh: torch.Tensor, rows: torch.Tensor,
                cached_here: torch.Tensor, totals: torch.Tensor, tokens: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std per (row, group) over the whole image.

    ``fresh`` are the values computed at some tokens (of rows ``rows``),
    ``cached_here`` the template's moments at the same tokens: they replace
    those in the template's totals.
    """
    groups = norm.num_groups
    sums = totals.to(torch.float64).clone()
    sums.index_add_(0, rows, moments(fresh, groups).to(torch.float64)
                    - cached_here.to(torch.float64))
    count = tokens * fresh.shape[1] // groups
    mean = sums[:, :groups] / count
    var = (sums[:, groups:] / count - mean * mean).clamp(min=0)
    return mean.float(), torch.rsqrt(var + norm.eps).float()


def apply_norm(norm: torch.nn.GroupNorm, values: torch.Tensor, rows: torch.Tensor,
               stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    mean, rstd = stats
    v = values.reshape(values.shape[0], norm.num_groups, -1)
    v = (v - mean[rows, :, None]) * rstd[rows, :, None]
    return v.reshape(values.shape) * norm.weight + norm.bias


def conv(module: torch.nn.Conv2d, gather: ConvGather, values: torch.Tensor) -> torch.Tensor:
    return gather.apply(module.weight, module.bias, values)


def pointwise(module: torch.nn.Conv2d, values: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution on token-major values."""
    return F.linear(values, module.weight[:, :, 0, 0], module.bias)


def _rows_of(flat: torch.Tensor, region: Region) -> torch.Tensor:
    return flat // region.grid.tokens


def resnet(block: Any, x: torch.Tensor, temb: torch.Tensor, level: LevelPlan,
           c: Cache) -> torch.Tensor:
    """``ResnetBlock2D`` (default time-embedding norm, no up/down sampling inside)."""
    region, g = level.region, level.resnet
    tokens = region.grid.tokens
    stats1 = group_stats(block.norm1, x, region.row, c["m1"], c["t1"], tokens)
    src = g.input.combine(c["ring"], x)
    h = block.nonlinearity(apply_norm(block.norm1, src, _rows_of(g.conv1.src, region), stats1))
    h = conv(block.conv1, g.conv1, h)
    h_rows = _rows_of(g.conv1.out, region)
    if block.time_emb_proj is not None:
        h = h + block.time_emb_proj(block.nonlinearity(temb))[h_rows]
    stats2 = group_stats(block.norm2, h, h_rows, c["m2"], c["t2"], tokens)
    h = block.nonlinearity(apply_norm(block.norm2, h, h_rows, stats2))
    h = conv(block.conv2, g.conv2, h)
    shortcut = pointwise(block.conv_shortcut, x) if block.conv_shortcut is not None else x
    return (shortcut + h) / block.output_scale_factor


def _attention(attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head SDPA of one row: ``q [n, C]``, ``k/v [m, C]`` -> ``[n, C]``."""
    heads = attn.heads
    d = q.shape[1] // heads
    qh = q.reshape(1, -1, heads, d).transpose(1, 2)
    kh = k.reshape(1, -1, heads, k.shape[1] // heads).transpose(1, 2)
    vh = v.reshape(1, -1, heads, v.shape[1] // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).reshape(-1, heads * d)


def _self_attention(attn: Any, hidden: torch.Tensor, region: Region, k_cache: torch.Tensor,
                    v_cache: torch.Tensor) -> torch.Tensor:
    q, k, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    tokens = region.grid.tokens
    outs, start = [], 0
    for row, n in enumerate(region.counts):
        if n == 0:
            continue
        pos = region.flat[start:start + n] - row * tokens
        keys = k_cache[row].index_copy(0, pos, k[start:start + n])
        values = v_cache[row].index_copy(0, pos, v[start:start + n])
        outs.append(_attention(attn, q[start:start + n], keys, values))
        start += n
    out = torch.cat(outs) if outs else q
    return attn.to_out[1](attn.to_out[0](out))


def _cross_attention(attn: Any, hidden: torch.Tensor, region: Region,
                     encoder: torch.Tensor) -> torch.Tensor:
    q = attn.to_q(hidden)
    keys, values = attn.to_k(encoder), attn.to_v(encoder)
    outs, start = [], 0
    for row, n in enumerate(region.counts):
        if n:
            outs.append(_attention(attn, q[start:start + n], keys[row], values[row]))
            start += n
    out = torch.cat(outs) if outs else q
    return attn.to_out[1](attn.to_out[0](out))


def transformer(model: Any, x: torch.Tensor, encoder: torch.Tensor, level: LevelPlan,
                c: Cache) -> torch.Tensor:
    """``Transformer2DModel`` on continuous inputs with ``BasicTransformerBlock``s (layer norm)."""
    region = level.region
    stats = group_stats(model.norm, x, region.row, c["m"], c["t"], region.grid.tokens)
    h = apply_norm(model.norm, x, region.row, stats)
    h = pointwise(model.proj_in, h) if not model.use_linear_projection else model.proj_in(h)
    for i, block in enumerate(model.transformer_blocks):
        h = _self_attention(block.attn1, block.norm1(h), region, c[f"k{i}"], c[f"v{i}"]) + h
        if block.attn2 is not None:
            h = _cross_attention(block.attn2, block.norm2(h), region, encoder) + h
        h = block.ff(block.norm3(h)) + h
    h = pointwise(model.proj_out, h) if not model.use_linear_projection else model.proj_out(h)
    return h + x


def downsample(sampler: Any, x: torch.Tensor, gather: ConvGather, assembly: Any,
               c: Cache) -> torch.Tensor:
    """``Downsample2D`` (3x3 convolution, stride 2): output at the coarser level's R."""
    return conv(sampler.conv, gather, assembly.combine(c["ring"], x))


def upsample(sampler: Any, x: torch.Tensor, gather: ConvGather, assembly: Any,
             c: Cache) -> torch.Tensor:
    """``Upsample2D`` (nearest 2x, then a 3x3 convolution): output at the finer level's R."""
    return conv(sampler.conv, gather, assembly.combine(c["ring"], x))


def head(unet: Any, x: torch.Tensor, level: LevelPlan, c: Cache) -> torch.Tensor:
    """``conv_norm_out`` -> ``conv_act`` -> ``conv_out`` at R."""
    region = level.region
    stats = group_stats(unet.conv_norm_out, x, region.row, c["m"], c["t"], region.grid.tokens)
    src = level.ring.combine(c["ring"], x)
    h = unet.conv_act(apply_norm(unet.conv_norm_out, src, _rows_of(level.ring.src, region),
                                 stats))
    return conv(unet.conv_out, level.resnet.conv2, h)
