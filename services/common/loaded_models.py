"""A small thread-safe map of loaded models, loaded on first use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class LoadedModels(Generic[V]):
    """Loads each name once, even under concurrent first requests."""

    def __init__(self, load: Callable[[str], V]) -> None:
        self._load = load
        self._models: dict[str, V] = {}
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, name: str) -> V:
        model = self._models.get(name)
        if model is not None:
            return model
        with self._lock:
            gate = self._loading.setdefault(name, threading.Lock())
        with gate:
            if name not in self._models:
                self._models[name] = self._load(name)
            return self._models[name]

    def names(self) -> list[str]:
        return sorted(self._models)
