"""Prometheus metrics of the ControlNet replica's model cache (labels: model only)."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

_M = TypeVar("_M", Counter, Gauge, Histogram)


def _metric(cls: type[_M], name: str, doc: str, labels: tuple[str, ...] = ()) -> _M:
    """The metric of that name, created on first use; a re-imported module reuses it."""
    try:
        return cls(name, doc, labels)
    except ValueError:  # already registered by an earlier import of this module
        existing: Any = REGISTRY._names_to_collectors[name]
        return existing  # type: ignore[no-any-return]


HITS = _metric(Counter, "dfleet_controlnet_cache_hits",
               "Streams opened on a ControlNet already resident.", ("model",))
MISSES = _metric(Counter, "dfleet_controlnet_cache_misses",
                 "Streams opened on a ControlNet that had to be loaded first.", ("model",))
LOADS = _metric(Counter, "dfleet_controlnet_cache_loads",
                "ControlNets loaded from storage.", ("model",))
EVICTIONS = _metric(Counter, "dfleet_controlnet_cache_evictions",
                    "ControlNets dropped to stay within the memory budget.", ("model",))
LOAD_SECONDS = _metric(Histogram, "dfleet_controlnet_cache_load_seconds",
                       "Time to load a ControlNet from storage.", ("model",))
RESIDENT_BYTES = _metric(Gauge, "dfleet_controlnet_cache_resident_bytes",
                         "Bytes of ControlNet weights resident.")
RESIDENT_MODELS = _metric(Gauge, "dfleet_controlnet_cache_resident_models",
                          "ControlNets resident.")
