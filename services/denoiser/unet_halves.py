"""The UNet's forward split where ControlNet residuals join it: down+mid, then up.

ControlNet residuals are added to the down blocks' skip outputs and to the mid
block's output, and nothing before that point reads them. So the down and mid
blocks can run while the ControlNet computes the step; only the up blocks wait.

:meth:`UnetHalves.down_mid` followed by :meth:`UnetHalves.up` performs the
operations of ``UNet2DConditionModel.forward`` (diffusers 0.42) in the same
order, for the UNets this fleet serves: SD1.5-shaped (no added embedding) and
SDXL-shaped (``text_time`` added embedding), with or without ControlNet
residuals. Configurations it does not mirror are refused at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

AddedCond = dict[str, torch.Tensor]


@dataclass
class DownMidOut:
    """What the up half needs: the mid output and skips, both before ControlNet residuals."""

    sample: torch.Tensor
    skips: tuple[torch.Tensor, ...]
    emb: torch.Tensor
    encoder_hidden_states: torch.Tensor
    forward_upsample_size: bool


def check_supported(unet: Any) -> None:
    """Raises ValueError for UNet options the split forward does not mirror."""
    config = unet.config
    unsupported = {
        "class_embed_type": config.class_embed_type is not None or config.num_class_embeds,
        "time_cond_proj_dim": config.time_cond_proj_dim is not None,
        "addition_embed_type": config.addition_embed_type not in (None, "text_time"),
        "encoder_hid_dim_type": config.encoder_hid_dim_type is not None,
    }
    bad = [name for name, flag in unsupported.items() if flag]
    if bad:
        raise ValueError(f"the split UNet forward does not support {', '.join(bad)}")


class UnetHalves:
    """Runs one UNet in two halves; holds no state between calls."""

    def __init__(self, unet: Any) -> None:
        check_supported(unet)
        self.unet = unet

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor, added_cond: AddedCond | None = None,
                down_residuals: list[torch.Tensor] | None = None,
                mid_residual: torch.Tensor | None = None) -> torch.Tensor:
        """Both halves back to back: what ``unet(...)`` returns."""
        state = self.down_mid(sample, timestep, encoder_hidden_states, added_cond)
        return self.up(state, down_residuals, mid_residual)

    def down_mid(self, sample: torch.Tensor, timestep: torch.Tensor,
                 encoder_hidden_states: torch.Tensor,
                 added_cond: AddedCond | None = None) -> DownMidOut:
        unet = self.unet
        up_factor = 2 ** unet.num_upsamplers
        forward_upsample_size = any(dim % up_factor != 0 for dim in sample.shape[-2:])
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
        emb = unet.time_embedding(t_emb, None)
        aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                     added_cond_kwargs=added_cond or {})
        emb = emb + aug_emb if aug_emb is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        encoder_hidden_states = unet.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond or {})
        sample = unet.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, res = block(hidden_states=sample, temb=emb,
                                    encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=None, cross_attention_kwargs=None,
                                    encoder_attention_mask=None)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            skips += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                sample = unet.mid_block(sample, emb, encoder_hidden_states=encoder_hidden_states,
                                        attention_mask=None, cross_attention_kwargs=None,
                                        encoder_attention_mask=None)
            else:
                sample = unet.mid_block(sample, emb)
        return DownMidOut(sample, skips, emb, encoder_hidden_states, forward_upsample_size)

    def up(self, state: DownMidOut, down_residuals: list[torch.Tensor] | None = None,
           mid_residual: torch.Tensor | None = None) -> torch.Tensor:
        unet = self.unet
        skips = state.skips
        sample = state.sample
        if down_residuals is not None and mid_residual is not None:
            skips = tuple(s + r for s, r in zip(skips, down_residuals, strict=False))
            sample = sample + mid_residual
        emb, hidden = state.emb, state.encoder_hidden_states
        upsample_size = None
        for i, block in enumerate(unet.up_blocks):
            is_final = i == len(unet.up_blocks) - 1
            res = skips[-len(block.resnets):]
            skips = skips[:-len(block.resnets)]
            if not is_final and state.forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                               encoder_hidden_states=hidden, cross_attention_kwargs=None,
                               upsample_size=upsample_size, attention_mask=None,
                               encoder_attention_mask=None)
            else:
                sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res,
                               upsample_size=upsample_size)
        if unet.conv_norm_out:
            sample = unet.conv_norm_out(sample)
            sample = unet.conv_act(sample)
        return unet.conv_out(sample)
