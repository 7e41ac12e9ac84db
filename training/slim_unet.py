"""A narrower diffusers UNet made from a full one: same blocks, fewer channels per level.

Every parameter of the slim UNet is its full namesake restricted to kept
channels along each dimension (:mod:`training.filter_pca` chooses them), so
the slim UNet starts out computing roughly what the full one computes on those
channels. A level's residual stream keeps one channel set wherever it appears
(ResNet inputs and outputs, skip connections, concatenations in the up path,
samplers), so every connection stays consistent; each ResNet's and
transformer's inner channels, each attention's head channels and each
feed-forward's hidden channels are chosen on their own.

The time embedding keeps its full width (it runs once per step); its input,
sinusoidal features of the slim first width, reads the full layer's columns
of the nearest frequencies.
"""

from __future__ import annotations

from typing import Any

import torch

from training.filter_pca import per_head_subset, writers_subset

Indices = list[torch.Tensor | None]  # per dimension of a parameter; None keeps all


def slim_config(full_config: Any, widths: list[int]) -> dict[str, Any]:
    # Keys diffusers keeps for itself (such as the list of defaults to re-apply) stay out.
    config = {k: v for k, v in dict(full_config).items() if not k.startswith("_")}
    config["block_out_channels"] = tuple(widths)
    config["time_embedding_dim"] = 4 * full_config.block_out_channels[0]
    return config


def _concat_parts(config: Any) -> dict[tuple[int, int], tuple[int, int]]:
    """(up block, ResNet) -> (stream channels, skip channels) of its concatenated input, as
    diffusers' UNet2DConditionModel builds it."""
    channels = list(reversed(config.block_out_channels))
    layers = config.layers_per_block + 1
    parts, output = {}, channels[0]
    for i in range(len(channels)):
        previous, output = output, channels[i]
        below = channels[min(i + 1, len(channels) - 1)]
        for j in range(layers):
            skip = below if j == layers - 1 else output
            parts[(i, j)] = (previous if j == 0 else output, skip)
    return parts


class ChannelPlan:
    """Which channels of the full UNet each slim parameter keeps, per dimension."""

    def __init__(self, full: torch.nn.Module, widths: list[int]) -> None:
        config = full.config
        self.full = full
        self.width = dict(zip(config.block_out_channels, widths, strict=True))
        heads = config.attention_head_dim
        self.heads = heads if isinstance(heads, int) else heads[0]
        self.parts = _concat_parts(config)
        self.indices: dict[str, Indices] = {}
        self.stream = {size: writers_subset(ws, self.width[size])
                       for size, ws in self._stream_writers().items()}
        self._plan()

    def _stream_writers(self) -> dict[int, list[torch.Tensor]]:
        writers: dict[int, list[torch.Tensor]] = {}
        for name, module in self.full.named_modules():
            if name == "conv_in" or name.endswith(("conv2", "conv_shortcut", "proj_out")) \
                    or ".downsamplers." in name or ".upsamplers." in name:
                if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                    writers.setdefault(module.weight.shape[0], []).append(module.weight)
        return writers

    def _set(self, prefix: str, module: torch.nn.Module, out: torch.Tensor | None,
             inp: torch.Tensor | None) -> None:
        weight = module.weight
        dims: Indices = [out, inp] + [None] * (weight.dim() - 2)
        self.indices[f"{prefix}.weight"] = dims if weight.dim() > 1 else [out]
        if getattr(module, "bias", None) is not None:
            self.indices[f"{prefix}.bias"] = [out]

    def _plan(self) -> None:
        full = self.full
        s = self.stream
        c0 = full.config.block_out_channels[0]
        self._set("conv_in", full.conv_in, s[c0], None)
        self._set("conv_norm_out", full.conv_norm_out, s[c0], None)
        self._set("conv_out", full.conv_out, None, s[c0])
        self._time_input(c0)
        for name, module in full.named_modules():
            kind = type(module).__name__
            if kind == "ResnetBlock2D":
                self._resnet(name, module)
            elif kind == "Transformer2DModel":
                self._transformer(name, module)
            elif kind in ("Downsample2D", "Upsample2D") and getattr(module, "conv", None):
                size = module.conv.weight.shape[0]
                self._set(f"{name}.conv", module.conv, s[size], s[module.conv.weight.shape[1]])

    def _time_input(self, c0: int) -> None:
        half, slim_half = c0 // 2, self.width[c0] // 2
        nearest = torch.tensor([min(half - 1, round(j * half / slim_half))
                                for j in range(slim_half)])
        self.indices["time_embedding.linear_1.weight"] = [None, torch.cat([nearest,
                                                                           half + nearest])]

    def _resnet_input(self, name: str, channels: int) -> torch.Tensor:
        if not name.startswith("up_blocks."):
            return self.stream[channels]
        _, block, _, index = name.split(".")[:4]
        first, second = self.parts[(int(block), int(index))]
        return torch.cat([self.stream[first], first + self.stream[second]])

    def _resnet(self, name: str, block: torch.nn.Module) -> None:
        out_channels = block.conv2.weight.shape[0]
        inp = self._resnet_input(name, block.conv1.weight.shape[1])
        inner = writers_subset([block.conv1.weight, block.time_emb_proj.weight],
                               self.width[out_channels])
        out = self.stream[out_channels]
        self._set(f"{name}.norm1", block.norm1, inp, None)
        self._set(f"{name}.conv1", block.conv1, inner, inp)
        self._set(f"{name}.time_emb_proj", block.time_emb_proj, inner, None)
        self._set(f"{name}.norm2", block.norm2, inner, None)
        self._set(f"{name}.conv2", block.conv2, out, inner)
        if block.conv_shortcut is not None:
            self._set(f"{name}.conv_shortcut", block.conv_shortcut, out, inp)

    def _transformer(self, name: str, model: torch.nn.Module) -> None:
        channels = model.proj_in.weight.shape[1]
        width = self.width[channels]
        stream = self.stream[channels]
        blocks = list(model.transformer_blocks)
        writers = [model.proj_in.weight]
        for b in blocks:
            writers += [b.attn1.to_out[0].weight, b.attn2.to_out[0].weight, b.ff.net[2].weight]
        inner = writers_subset(writers, width)
        self._set(f"{name}.norm", model.norm, stream, None)
        self._set(f"{name}.proj_in", model.proj_in, inner, stream)
        self._set(f"{name}.proj_out", model.proj_out, stream, inner)
        for i, b in enumerate(blocks):
            prefix = f"{name}.transformer_blocks.{i}"
            for norm in ("norm1", "norm2", "norm3"):
                self._set(f"{prefix}.{norm}", getattr(b, norm), inner, None)
            for attn in ("attn1", "attn2"):
                self._attention(f"{prefix}.{attn}", getattr(b, attn), inner, width)
            self._feed_forward(f"{prefix}.ff", b.ff, inner, width, channels)

    def _attention(self, prefix: str, attn: torch.nn.Module, inner: torch.Tensor,
                   width: int) -> None:
        reads_text = bool(attn.is_cross_attention)
        norms = {n: getattr(attn, n).weight.norm(dim=1) for n in ("to_q", "to_k", "to_v")}
        out_cols = attn.to_out[0].weight.norm(dim=0)
        qk = per_head_subset(norms["to_q"] * norms["to_k"], self.heads, width)
        v = per_head_subset(norms["to_v"] * out_cols, self.heads, width)
        source = None if reads_text else inner
        self._set(f"{prefix}.to_q", attn.to_q, qk, inner)
        self._set(f"{prefix}.to_k", attn.to_k, qk, source)
        self._set(f"{prefix}.to_v", attn.to_v, v, source)
        self._set(f"{prefix}.to_out.0", attn.to_out[0], inner, v)

    def _feed_forward(self, prefix: str, ff: torch.nn.Module, inner: torch.Tensor, width: int,
                      channels: int) -> None:
        gate_proj, down = ff.net[0].proj, ff.net[2]
        hidden = down.weight.shape[1]
        rows = gate_proj.weight.norm(dim=1)
        importance = rows[:hidden] * rows[hidden:] * down.weight.norm(dim=0)
        keep = torch.sort(torch.topk(importance, hidden * width // channels).indices).values
        self._set(f"{prefix}.net.0.proj", gate_proj, torch.cat([keep, hidden + keep]), inner)
        self._set(f"{prefix}.net.2", down, inner, keep)

    def kept(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The full tensor ``name`` restricted to its kept channels."""
        for dim, index in enumerate(self.indices.get(name, [])):
            if index is not None:
                tensor = tensor.index_select(dim, index)
        return tensor


def slim_unet(full: torch.nn.Module, widths: list[int]) -> tuple[torch.nn.Module, ChannelPlan]:
    """The slim UNet at ``widths``, initialised from the full one's kept channels."""
    from diffusers import UNet2DConditionModel

    plan = ChannelPlan(full, widths)
    slim = UNet2DConditionModel.from_config(slim_config(full.config, widths))
    full_state = full.state_dict()
    state = {}
    for name, target in slim.state_dict().items():
        value = plan.kept(name, full_state[name])
        if value.shape != target.shape:
            raise ValueError(f"{name}: kept channels give {tuple(value.shape)}, the slim UNet "
                             f"has {tuple(target.shape)}")
        state[name] = value.clone()
    slim.load_state_dict(state)
    return slim.eval(), plan
