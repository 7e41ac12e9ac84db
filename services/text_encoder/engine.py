"""Tokenizes and encodes prompts exactly as the model family's pipelines do.

Which text encoders a model has and how their outputs combine is its family's
(:mod:`services.common.families`): SD1.5 one CLIP, SDXL two (concatenated hidden states plus
the pooled output). A call's LoRAs have their text-encoder layers merged into the encoders
first (:mod:`services.text_encoder.loras`). Loads, merges and passes run on the engine's
:class:`~services.common.compute.ComputeThread`.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.common.compute import ComputeThread
from services.common.errors import InvalidArgument
from services.common.families import Conditioning, PromptInput, TextModels
from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore
from services.text_encoder.loras import TextLora, TextPatchers

MAX_PROMPTS = 64


class TextEncoderEngine:
    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.models: LoadedModels[TextModels] = LoadedModels(store.load_text_models)
        self.compute = ComputeThread("text-encoder-compute")
        self.patchers = TextPatchers()

    def encode(self, model: str, prompts: list[PromptInput],
               loras: Sequence[TextLora] = ()) -> list[Conditioning]:
        """One conditioning (named ``[1, ...]`` tensors) per prompt, with ``loras``' text-encoder
        layers merged into the encoders (in place, for this call)."""
        if not prompts:
            raise InvalidArgument("at least one prompt is required", field="inputs")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidArgument(f"at most {MAX_PROMPTS} prompts per call", field="inputs")
        family = self.store.family(model)

        def run() -> list[Conditioning]:
            models = self.models.get(model)
            components = [encoder for _, encoder in family.text_components]
            self.patchers.apply(model, dict(zip(components, models.encoders, strict=True)),
                                loras)
            return family.encode(models, prompts)
        return self.compute.run(run)
