"""Host-memory LRU of LoRA weights read from ``.safetensors`` files."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch
from safetensors import safe_open

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.model_store import ModelStore


@dataclass(frozen=True)
class LoraWeights:
    name: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass(frozen=True)
class PrepareResult:
    name: str
    nbytes: int
    hit: bool
    load_ms: float


def read_lora(name: str, path: str) -> LoraWeights:
    with safe_open(path, framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = dict(f.metadata() or {})
    return LoraWeights(name, tensors, metadata)


class LoraCacheEngine:
    """Keeps recently used LoRAs in host memory within ``budget_bytes`` (LRU)."""

    def __init__(self, store: ModelStore, budget_bytes: int) -> None:
        self.store = store
        self.budget_bytes = budget_bytes
        self._cache: OrderedDict[str, LoraWeights] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def prepare(self, name: str) -> PrepareResult:
        if not name:
            raise InvalidArgument("a LoRA name is required", field="loras")
        start = time.perf_counter()
        with self._lock:
            cached = self._cache.get(name)
            if cached is not None:
                self._cache.move_to_end(name)
                self.hits += 1
                return PrepareResult(name, cached.nbytes, True, 0.0)
        path = self.store.lora_path(name)
        weights = read_lora(name, str(path))
        if weights.nbytes > self.budget_bytes:
            raise ResourceExhausted(
                f"LoRA {name!r} needs {weights.nbytes} bytes, over the cache budget "
                f"of {self.budget_bytes}", field="loras")
        with self._lock:
            self.misses += 1
            self._cache[name] = weights
            self._cache.move_to_end(name)
            while sum(w.nbytes for w in self._cache.values()) > self.budget_bytes:
                self._cache.popitem(last=False)
        return PrepareResult(name, weights.nbytes, False, (time.perf_counter() - start) * 1e3)

    def get(self, name: str) -> LoraWeights:
        self.prepare(name)
        with self._lock:
            return self._cache[name]

    def names(self) -> list[str]:
        with self._lock:
            return list(self._cache)
