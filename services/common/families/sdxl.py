"""Stable Diffusion XL: two CLIP text encoders whose penultimate hidden states are concatenated,
the second one's pooled output and six time ids (original size, crop, target size) added to the
UNet's time embedding; an empty negative prompt is all zeros when the folder says so."""

from __future__ import annotations

from typing import Any

import torch

from services.common.families.base import Conditioning, Family, PromptInput, TextModels
from services.common.families.sd15 import clip_tokens


class StableDiffusionXL(Family):
    name = "sdxl"
    pipelines = frozenset({"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                           "StableDiffusionXLInpaintPipeline"})
    text_components = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    addons = frozenset({"lora", "controlnet", "cfg_partner", "template_edit", "ip_adapter",
                        "preview"})
    zero_empty_negative = True

    def fits_controlnet(self, controlnet: dict[str, Any], denoiser: dict[str, Any]) -> bool:
        return (controlnet.get("addition_embed_type") == "text_time"
                and controlnet.get("cross_attention_dim") == denoiser.get("cross_attention_dim"))

    def encode(self, models: TextModels, prompts: list[PromptInput]) -> list[Conditioning]:
        """As ``StableDiffusionXLPipeline.encode_prompt`` (prompt_2 = prompt, no clip skip)."""
        texts = [p.text for p in prompts]
        hidden: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        with torch.inference_mode():
            for tokenizer, encoder in zip(models.tokenizers, models.encoders, strict=True):
                out = encoder(clip_tokens(tokenizer, texts).input_ids, output_hidden_states=True)
                if pooled is None and out[0].ndim == 2:  # the encoder with a projection
                    pooled = out[0]
                hidden.append(out.hidden_states[-2])
        assert pooled is not None
        embeds = torch.concat(hidden, dim=-1)
        found = []
        for i, prompt in enumerate(prompts):
            one = {"prompt_embeds": embeds[i:i + 1].clone(),
                   "pooled_prompt_embeds": pooled[i:i + 1].clone()}
            found.append({k: torch.zeros_like(v) for k, v in one.items()} if prompt.zeros
                         else one)
        return found

    def added_cond(self, conditioning: Conditioning, width: int, height: int
                   ) -> Conditioning | None:
        """The pooled text and the time ids for the default micro-conditioning: original size
        = target size, no crop."""
        pooled = conditioning["pooled_prompt_embeds"]
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=pooled.dtype)
        return {"text_embeds": pooled, "time_ids": time_ids}
