"""Tokenizes and encodes prompts exactly as the model family's pipelines do.

Which text encoders a model has and how their outputs combine is its family's
(:mod:`services.common.families`): SD1.5 one CLIP, SDXL two (concatenated hidden states plus
the pooled output). Loads and passes run on the engine's
:class:`~services.common.compute.ComputeThread`.
"""

from __future__ import annotations

from services.common.compute import ComputeThread
from services.common.errors import InvalidArgument
from services.common.families import Conditioning, PromptInput, TextModels
from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore

MAX_PROMPTS = 64


class TextEncoderEngine:
    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.models: LoadedModels[TextModels] = LoadedModels(store.load_text_models)
        self.compute = ComputeThread("text-encoder-compute")

    def encode(self, model: str, prompts: list[PromptInput]) -> list[Conditioning]:
        """One conditioning (named ``[1, ...]`` tensors) per prompt."""
        if not prompts:
            raise InvalidArgument("at least one prompt is required", field="inputs")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidArgument(f"at most {MAX_PROMPTS} prompts per call", field="inputs")
        family = self.store.family(model)
        return self.compute.run(lambda: family.encode(self.models.get(model), prompts))
