"""One step of a ControlNet, called as its pipelines call it, whatever its kind.

A UNet ControlNet (SD1.5, SDXL) returns residuals for the UNet's down blocks and one for its
mid block; a Flux ControlNet returns samples for the transformer's joint blocks and for its
single blocks, which the transformer adds inside those blocks. Both travel as
:data:`Residuals`, two lists: (down, [mid]) or (joint, single). The ControlNet service and
the denoiser's co-located ControlNet call the model through here.
"""

from __future__ import annotations

from typing import Any

import torch

from services.common.errors import FailedPrecondition

Residuals = tuple[list[torch.Tensor], list[torch.Tensor]]


def is_flux(model: Any) -> bool:
    return type(model).__name__ == "FluxControlNetModel"


def residuals(model: Any, latents: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor,
              cond: torch.Tensor, scale: float, added_cond: dict[str, torch.Tensor] | None = None,
              shared: dict[str, torch.Tensor] | None = None) -> Residuals:
    """The model's residuals for one step of ``latents``' rows (``timestep`` 0-d, as the
    scheduler gives it)."""
    if is_flux(model):
        return _flux(model, latents, timestep, embeds, cond, scale, added_cond or {},
                     shared or {})
    down, mid = model(latents, timestep, encoder_hidden_states=embeds, controlnet_cond=cond,
                      conditioning_scale=scale, added_cond_kwargs=added_cond, guess_mode=False,
                      return_dict=False)
    return list(down), [mid]


def _flux(model: Any, latents: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor,
          cond: torch.Tensor, scale: float, added: dict[str, torch.Tensor],
          shared: dict[str, torch.Tensor]) -> Residuals:
    """As ``FluxControlNetPipeline``: the timestep in the latents' dtype over 1000, the
    guidance scale when the ControlNet embeds it, the rows' shared position ids."""
    try:
        rows = latents.shape[0]
        joint, single = model(
            hidden_states=latents, controlnet_cond=cond, conditioning_scale=scale,
            timestep=timestep.to(latents.dtype).reshape(-1).expand(rows) / 1000,
            guidance=added["guidance"] if model.config.guidance_embeds else None,
            pooled_projections=added["pooled_projections"], encoder_hidden_states=embeds,
            txt_ids=shared["txt_ids"], img_ids=shared["img_ids"], return_dict=False)
    except KeyError as missing:
        raise FailedPrecondition(f"a Flux ControlNet step needs {missing.args[0]!r}, which "
                                 "the denoiser did not send", field="controlnet") from None
    return list(joint or ()), list(single or ())


def check_compatible(name: str, model: Any, embeds: torch.Tensor,
                     latents: torch.Tensor | None = None) -> None:
    """FAILED_PRECONDITION when the base model's tensors do not fit this ControlNet."""
    config = model.config
    if is_flux(model):
        width, channels, channel_dim = config.joint_attention_dim, config.in_channels, -1
    else:
        width, channels, channel_dim = config.cross_attention_dim, config.in_channels, 1
    if embeds.shape[-1] != width:
        raise FailedPrecondition(f"ControlNet {name!r} takes text embeddings of width {width}, "
                                 f"the base model gives {embeds.shape[-1]}", field="controlnet")
    if latents is not None and latents.shape[channel_dim] != channels:
        raise FailedPrecondition(f"ControlNet {name!r} takes {channels} latent channels, the "
                                 f"base model gives {latents.shape[channel_dim]}",
                                 field="controlnet")
