"""Image-token embeddings of prompts (:class:`~services.common.ar_models.ArImageModel`) and
embedding adapters, loaded on first use; loads and passes run on the engine's
:class:`~services.common.compute.ComputeThread`."""

from __future__ import annotations

import threading

import torch

from services.common.ar_models import ArImageModel, EmbedAdapter, load_adapter, load_ar
from services.common.compute import ComputeThread
from services.common.errors import InvalidArgument
from services.common.loaded_models import LoadedModels
from services.common.model_store import ModelStore


class ArEmbedEngine:
    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.models: LoadedModels[ArImageModel] = LoadedModels(
            lambda name: load_ar(store.get(name, ("ar_embed",)).path))
        self.adapters: LoadedModels[EmbedAdapter] = LoadedModels(
            lambda name: load_adapter(store.get(name, ("embed_adapter",), "adapter").path))
        self.compute = ComputeThread("ar-embed-compute")
        self._busy = 0
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return self.models.names() + self.adapters.names()

    def load(self) -> int:
        with self._lock:
            return self._busy

    def embed(self, model: str, prompt: str) -> torch.Tensor:
        """``[1, N, H]`` image-token embeddings of ``prompt`` by AR model ``model``."""
        self.store.get(model, ("ar_embed",))
        return self._run(lambda: self.models.get(model).embed(prompt))

    def adapt(self, adapter: str, embeddings: torch.Tensor) -> torch.Tensor:
        """``adapter``'s output for ``[1, N, in]`` embeddings: ``[1, N, out]``."""
        self.store.get(adapter, ("embed_adapter",), "adapter")
        module = self.adapters.get(adapter)
        width = module[0].in_features
        if embeddings.ndim != 3 or embeddings.shape[-1] != width:
            raise InvalidArgument(f"adapter {adapter!r} takes [1, tokens, {width}] embeddings, "
                                  f"not {list(embeddings.shape)}", field="embeddings")

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return module(embeddings.to(module[0].weight.dtype)).clone()
        return self._run(run)

    def _run(self, work):  # type: ignore[no-untyped-def]
        with self._lock:
            self._busy += 1
        try:
            return self.compute.run(work)
        finally:
            with self._lock:
                self._busy -= 1
