"""Stable Diffusion 1.x/2.x: one CLIP text encoder whose last hidden state is the conditioning;
a UNet over 4-channel latents; 9-channel UNets inpaint."""

from __future__ import annotations

from typing import Any

import torch

from services.common.families.base import Conditioning, Family, PromptInput, TextModels


def clip_tokens(tokenizer: Any, texts: list[str]) -> Any:
    """The tokenizer's batch (input ids, attention mask), padded to its maximum length."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt")


class StableDiffusion(Family):
    name = "sd15"
    pipelines = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                           "StableDiffusionInpaintPipeline"})
    text_components = (("tokenizer", "text_encoder"),)
    addons = frozenset({"lora", "controlnet", "cfg_partner", "template_edit", "ip_adapter",
                        "preview"})

    def fits_controlnet(self, controlnet: dict[str, Any], denoiser: dict[str, Any]) -> bool:
        return (controlnet.get("addition_embed_type") is None
                and controlnet.get("cross_attention_dim") == denoiser.get("cross_attention_dim"))

    def encode(self, models: TextModels, prompts: list[PromptInput]) -> list[Conditioning]:
        """As the pipelines' ``encode_prompt``: the last hidden state, attention mask only
        where the encoder's config asks for one."""
        tokenizer, encoder = models.tokenizers[0], models.encoders[0]
        tokens = clip_tokens(tokenizer, [p.text for p in prompts])
        mask = tokens.attention_mask if getattr(encoder.config, "use_attention_mask",
                                                False) else None
        with torch.inference_mode():
            embeds = encoder(tokens.input_ids, attention_mask=mask)[0]
        return [{"prompt_embeds": embeds[i:i + 1].clone()} for i in range(len(prompts))]
