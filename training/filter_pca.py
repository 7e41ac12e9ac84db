"""Per-layer PCA of a UNet's filter weights: how many filters each layer needs, and which.

For a layer with ``n`` output filters (rows of its weight, flattened), the
principal components of the centred filters say how many directions carry a
variance fraction ``tau``: ``k(tau)`` of ``n``. A diffusers UNet has one width
per resolution level (every ResNet, transformer and sampler of the level
shares it), so a level's width is the median of its layers' ``k / n`` times
its width, rounded up to a multiple of what GroupNorm groups and attention
heads allow.

Which filters to keep: the ones that best span the principal subspace
(column-pivoted QR on the top components, the usual column-subset choice).
Channels that several layers write (a level's residual stream, a
transformer's inner stream) are chosen on all their writers' filters at once;
attention channels are chosen head by head so every head keeps the same width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch


@dataclass(frozen=True)
class LayerPca:
    name: str
    filters: int  # n: output channels
    kept: int  # k(tau)

    @property
    def fraction(self) -> float:
        return self.kept / self.filters


def explained(weight: torch.Tensor) -> np.ndarray:
    """Cumulative variance fraction of the centred filters' principal components."""
    rows = weight.detach().double().reshape(weight.shape[0], -1)
    rows = rows - rows.mean(dim=0, keepdim=True)
    variance = torch.linalg.svdvals(rows).pow(2).numpy()
    total = variance.sum()
    return np.cumsum(variance) / total if total > 0 else np.ones_like(variance)


def components_for(weight: torch.Tensor, tau: float) -> int:
    cumulative = explained(weight)
    return int(min(len(cumulative), np.searchsorted(cumulative, tau - 1e-12) + 1))


def layer_pcas(unet: torch.nn.Module, tau: float) -> list[LayerPca]:
    """Every convolution and linear layer whose output is a channel space of the UNet (not
    the time embedding, not the 4-channel output head)."""
    result = []
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            continue
        if name.startswith(("time_embedding", "conv_out")):
            continue
        weight = module.weight
        result.append(LayerPca(name, weight.shape[0], components_for(weight, tau)))
    return result


def level_of(name: str, levels: int) -> int:
    """The resolution level a layer works at (0 = full latent resolution)."""
    if name.startswith("down_blocks."):
        return int(name.split(".")[1])
    if name.startswith("up_blocks."):
        return levels - 1 - int(name.split(".")[1])
    if name.startswith("mid_block."):
        return levels - 1
    return 0  # conv_in, conv_norm_out


def width_multiple(norm_groups: int, heads: int) -> int:
    return norm_groups * heads // math.gcd(norm_groups, heads)


def level_widths(unet: torch.nn.Module, tau: float) -> tuple[list[int], list[LayerPca]]:
    """Each level's width at ``tau`` and the per-layer analysis it came from."""
    config = unet.config
    channels = list(config.block_out_channels)
    heads = config.attention_head_dim
    heads = heads if isinstance(heads, int) else max(heads)
    multiple = width_multiple(config.norm_num_groups, heads)
    pcas = layer_pcas(unet, tau)
    widths = []
    for level, full in enumerate(channels):
        fractions = [p.fraction for p in pcas if level_of(p.name, len(channels)) == level]
        wanted = float(np.median(fractions)) * full
        widths.append(int(min(full, max(multiple, math.ceil(wanted / multiple) * multiple))))
    return widths, pcas


def spanning_subset(rows: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` row indices whose rows best span the top ``count`` principal components of
    the centred rows, sorted."""
    matrix = rows.detach().double()
    matrix = (matrix - matrix.mean(dim=0, keepdim=True)).numpy()
    if count >= matrix.shape[0]:
        return torch.arange(matrix.shape[0])
    left, _, _ = np.linalg.svd(matrix, full_matrices=False)
    _, _, pivots = scipy.linalg.qr(left[:, :count].T, pivoting=True)
    return torch.from_numpy(np.sort(pivots[:count]))


def writers_subset(weights: list[torch.Tensor], count: int) -> torch.Tensor:
    """Channels written by several layers: each layer's filters scaled to unit norm overall,
    side by side, so every writer counts."""
    rows = [w.detach().reshape(w.shape[0], -1) for w in weights]
    rows = [r / r.norm().clamp_min(1e-12) for r in rows]
    return spanning_subset(torch.cat(rows, dim=1), count)


def per_head_subset(importance: torch.Tensor, heads: int, count: int) -> torch.Tensor:
    """The most important ``count / heads`` channels of each head's block, sorted."""
    size = importance.shape[0] // heads
    keep = count // heads
    picks = [h * size + torch.topk(importance[h * size:(h + 1) * size], keep).indices
             for h in range(heads)]
    return torch.sort(torch.cat(picks)).values
