"""LoRAs' text-encoder layers: fetched from the node's LoRA cache service, kept within a byte
budget (least recently used out), and merged into a model's encoders for one call.

A call's *patch* is its LoRAs and scales in the request's order (one scale for the model and
its text encoders, as the reference pipelines' ``set_adapters`` sets by default). The
encoders hold one patch at a time; switching restores every touched weight from a pristine
copy first (:class:`~services.common.lora_merge.LoraPatcher`), so a call without LoRAs encodes
with the original weights bit for bit.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument
from services.common.lora_files import text_encoder_layers
from services.common.lora_merge import Layers, LoraPatcher


@dataclass(frozen=True)
class TextLoraSpec:
    name: str
    scale: float
    address: str                    # the LoRA cache that holds it


@dataclass(frozen=True)
class TextLora:
    name: str
    scale: float
    layers: dict[str, Layers]       # encoder component (text_encoder, ...) -> module -> layer


Fetch = Callable[[str, str, str], dict[str, Layers]]   # (address, name, request id)


class TextLoraLayers:
    """Thread-safe LRU of LoRAs' text-encoder layers within ``budget_bytes``."""

    def __init__(self, fetch: Fetch, budget_bytes: int) -> None:
        self.fetch = fetch
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, dict[str, Layers]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, specs: Sequence[TextLoraSpec], request_id: str) -> list[TextLora]:
        return [TextLora(s.name, s.scale, self._layers(s, request_id)) for s in specs]

    def _layers(self, spec: TextLoraSpec, request_id: str) -> dict[str, Layers]:
        with self._lock:
            if spec.name in self._entries:
                self._entries.move_to_end(spec.name)
                return self._entries[spec.name]
        layers = text_encoder_layers(self.fetch(spec.address, spec.name, request_id))
        with self._lock:
            self._entries[spec.name] = layers
            while len(self._entries) > 1 and _nbytes(self._entries) > self.budget_bytes:
                self._entries.popitem(last=False)
        return layers


def _nbytes(entries: OrderedDict[str, dict[str, Layers]]) -> int:
    return sum(layer.nbytes() for by_component in entries.values()
               for layers in by_component.values() for layer in layers.values())


class TextPatchers:
    """One :class:`LoraPatcher` per encoder of each loaded model; used on the compute thread."""

    def __init__(self) -> None:
        self._patchers: dict[str, dict[str, LoraPatcher]] = {}

    def apply(self, model: str, encoders: dict[str, Any], loras: Sequence[TextLora]) -> None:
        """Makes ``loras`` the patch merged into ``encoders`` (component -> module)."""
        patchers = self._patchers.get(model, {})
        if any(patchers.get(c) is None or patchers[c].model is not e for c, e in encoders.items()):
            patchers = {c: LoraPatcher(e) for c, e in encoders.items()}   # (re)loaded model
            self._patchers[model] = patchers
        for lora in loras:
            for component, layers in lora.layers.items():
                if component not in patchers:
                    raise InvalidArgument(f"LoRA {lora.name!r} has layers for {component}, "
                                          f"which {model!r} does not have", field="loras")
                patchers[component].check(lora.name, layers)
        patch = tuple((lora.name, lora.scale) for lora in loras)
        for component, patcher in patchers.items():
            patcher.apply(patch, {lora.name: lora.layers.get(component, {}) for lora in loras})
