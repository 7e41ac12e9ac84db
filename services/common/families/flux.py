"""Flux (FLUX.1-dev and -schnell): a CLIP text encoder whose pooled output and a T5 encoder
whose last hidden state are the conditioning; ``FluxTransformer2DModel`` over latents packed
into 2x2 patches (so sizes are multiples of twice the VAE's factor); a flow-match scheduler
shifted by the image's token count; guidance distilled into the model (dev embeds the scale,
schnell ignores it), so no classifier-free guidance; a VAE with a shift factor; inpainting on
the base model (the pipeline blends the re-noised image outside the mask each step)."""

from __future__ import annotations

from typing import Any

import torch

from services.common import schedulers
from services.common.families.base import Conditioning, Family, PromptInput, TextModels
from services.common.families.sd15 import clip_tokens

T5_MAX_SEQUENCE_LENGTH = 512   # the pipelines' max_sequence_length default (and maximum)
DEFAULT_SAMPLE_SIZE = 128      # the pipelines' default latent side (1024 px with an 8x VAE)


class Flux(Family):
    name = "flux"
    pipelines = frozenset({"FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"})
    denoiser = "transformer"
    text_components = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    addons = frozenset({"lora", "controlnet", "preview"})
    schedulers = schedulers.FLOW_MATCHING
    classifier_free_guidance = False
    default_guidance = 3.5
    inpaints_on_base = True
    controlnets_read_latents = True
    default_strength = 0.6
    default_inpaint_strength = 0.6

    def default_size(self, denoiser_config: dict[str, Any], vae_scale_factor: int) -> int:
        return DEFAULT_SAMPLE_SIZE * vae_scale_factor

    def size_factor(self, vae_scale_factor: int) -> int:
        return vae_scale_factor * 2

    def fits_controlnet(self, controlnet: dict[str, Any], denoiser: dict[str, Any]) -> bool:
        """A ControlNet that reads VAE-encoded, packed control images (no pixel hint block, no
        union modes) with this transformer's widths."""
        return (controlnet.get("_class_name") == "FluxControlNetModel"
                and controlnet.get("conditioning_embedding_channels") is None
                and controlnet.get("num_mode") is None
                and all(controlnet.get(key) == denoiser.get(key)
                        for key in ("in_channels", "joint_attention_dim",
                                    "pooled_projection_dim")))

    def encode(self, models: TextModels, prompts: list[PromptInput]) -> list[Conditioning]:
        """As ``FluxPipeline.encode_prompt`` (prompt_2 = prompt): CLIP's pooled output, and T5's
        last hidden state over the prompt padded to 512 tokens (no attention mask)."""
        texts = [p.text for p in prompts]
        (clip_tokenizer, t5_tokenizer), (clip, t5) = models.tokenizers, models.encoders
        t5_ids = t5_tokenizer(texts, padding="max_length", max_length=T5_MAX_SEQUENCE_LENGTH,
                              truncation=True, return_length=False,
                              return_overflowing_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            pooled = clip(clip_tokens(clip_tokenizer, texts).input_ids,
                          output_hidden_states=False).pooler_output
            embeds = t5(t5_ids, output_hidden_states=False)[0]
        return [{"prompt_embeds": embeds[i:i + 1].clone(),
                 "pooled_prompt_embeds": pooled[i:i + 1].clone()} for i in range(len(prompts))]
