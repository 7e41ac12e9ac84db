"""Tokenizes and encodes prompts exactly as the Stable Diffusion pipelines do."""

from __future__ import annotations

import torch

from services.common.compute import ComputeThread
from services.common.errors import InvalidArgument
from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore

MAX_PROMPTS = 64


class TextEncoderEngine:
    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.models: LoadedModels[tuple] = LoadedModels(store.load_text_encoder)
        self.compute = ComputeThread("text-encoder-compute")

    def encode(self, model: str, prompts: list[str]) -> list[torch.Tensor]:
        """One ``[1, tokens, dim]`` tensor per prompt (padded to the tokenizer's max length)."""
        if not prompts:
            raise InvalidArgument("at least one prompt is required", field="prompts")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidArgument(f"at most {MAX_PROMPTS} prompts per call", field="prompts")
        self.store.pipeline(model)
        return self.compute.run(self._encode, model, prompts)

    def _encode(self, model: str, prompts: list[str]) -> list[torch.Tensor]:
        tokenizer, encoder = self.models.get(model)
        tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        use_mask = getattr(encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask if use_mask else None
        with torch.inference_mode():
            embeds = encoder(tokens.input_ids, attention_mask=mask)[0]
        return [embeds[i:i + 1].clone() for i in range(len(prompts))]
