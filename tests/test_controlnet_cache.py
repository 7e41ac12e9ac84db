"""The ControlNet replica's model cache: residency within a byte budget, LRU, pins, metrics.

Covers: hits, misses and loads (counters and the ``dfleet_controlnet_cache_*`` Prometheus
series); least recently used idle models are evicted to make room; a model in use by a stream
is never evicted, and a load that cannot fit next to models in use is refused with
RESOURCE_EXHAUSTED; concurrent first requests load a model once; the real engine serves one
resident ControlNet to requests whose base models fit it and refuses base models that do not
(FAILED_PRECONDITION), and an unknown name is NOT_FOUND.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from services.common.errors import FailedPrecondition, NotFound, ResourceExhausted
from services.common.model_store import ModelStore
from services.controlnet.cache import ControlNetCache, model_bytes
from services.controlnet.engine import ControlNetEngine


def _model(nbytes: int) -> torch.nn.Module:
    return torch.nn.Linear(nbytes // 4, 1, bias=False)  # float32 weights: nbytes


class _Loader:
    def __init__(self, sizes: dict[str, int], delay_s: float = 0.0) -> None:
        self.sizes = sizes
        self.delay_s = delay_s
        self.calls: list[str] = []

    def __call__(self, name: str) -> torch.nn.Module:
        self.calls.append(name)
        time.sleep(self.delay_s)
        return _model(self.sizes[name])


def _sample(name: str, model: str) -> float:
    return REGISTRY.get_sample_value(name, {"model": model}) or 0.0


def test_hits_misses_and_loads_are_counted() -> None:
    loader = _Loader({"cn-metrics": 400})
    cache = ControlNetCache(loader, budget_bytes=1000)
    before = {kind: _sample(f"dfleet_controlnet_cache_{kind}_total", "cn-metrics")
              for kind in ("hits", "misses", "loads")}
    first = cache.acquire("cn-metrics")
    cache.release("cn-metrics")
    second = cache.acquire("cn-metrics")
    cache.release("cn-metrics")
    assert first is second and loader.calls == ["cn-metrics"]
    assert (cache.hits, cache.misses, cache.loads) == (1, 1, 1)
    after = {kind: _sample(f"dfleet_controlnet_cache_{kind}_total", "cn-metrics")
             for kind in ("hits", "misses", "loads")}
    assert {k: after[k] - before[k] for k in after} == {"hits": 1, "misses": 1, "loads": 1}
    assert REGISTRY.get_sample_value("dfleet_controlnet_cache_resident_bytes") == 400


def test_least_recently_used_idle_model_is_evicted() -> None:
    loader = _Loader({"a": 400, "b": 400, "c": 400})
    cache = ControlNetCache(loader, budget_bytes=1000)
    for name in ("a", "b", "a", "c"):  # a used after b: b is the oldest when c needs room
        cache.acquire(name)
        cache.release(name)
    assert cache.names() == ["a", "c"]
    assert cache.evictions == 1 and cache.resident_bytes == 800
    cache.acquire("b")
    assert loader.calls == ["a", "b", "c", "b"]


def test_model_in_use_is_kept_and_a_load_that_cannot_fit_is_refused() -> None:
    cache = ControlNetCache(_Loader({"a": 600, "b": 600, "huge": 2000}), budget_bytes=1000)
    held = cache.acquire("a")
    with pytest.raises(ResourceExhausted, match="in use: a"):
        cache.acquire("b")
    with pytest.raises(ResourceExhausted, match="over the budget"):
        cache.acquire("huge")
    assert cache.names() == ["a"] and cache.acquire("a") is held
    cache.release("a")
    cache.release("a")
    cache.acquire("b")  # a is idle now and makes room
    assert cache.names() == ["b"]


def test_concurrent_first_requests_load_once() -> None:
    loader = _Loader({"slow": 400}, delay_s=0.2)
    cache = ControlNetCache(loader, budget_bytes=1000)
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(cache.acquire("slow")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == ["slow"] and len({id(m) for m in got}) == 1
    assert (cache.misses, cache.hits) == (1, 3)


def test_engine_serves_compatible_bases_and_refuses_others(tiny_models: Path) -> None:
    store = ModelStore(tiny_models)
    engine = ControlNetEngine(store, budget_bytes=64 << 20)
    resident = engine.acquire("tiny-cn-a")
    assert engine.cache.resident_bytes == model_bytes(resident.model)
    width = resident.model.config.cross_attention_dim
    latents = torch.randn(2, 4, 8, 8)
    embeds = torch.randn(2, 77, width)
    cond = torch.rand(2, 3, 64, 64)
    down, mid = engine.step(resident, latents, torch.tensor(500.0), embeds, cond, 0.7)
    expected = resident.model(latents, torch.tensor(500.0), encoder_hidden_states=embeds,
                              controlnet_cond=cond, conditioning_scale=0.7, return_dict=False)
    # a UNet ControlNet's second list is its one mid-block sample
    assert len(mid) == 1 and torch.equal(mid[0], expected[1])
    assert len(down) == len(expected[0])
    resident.check_compatible(embeds, latents)  # tiny-sd and tiny-sd's text encoder fit
    with pytest.raises(FailedPrecondition, match="text embeddings of width"):
        resident.check_compatible(torch.randn(2, 77, width * 2))
    with pytest.raises(FailedPrecondition, match="latent channels"):
        resident.check_compatible(embeds, torch.randn(2, 9, 8, 8))
    engine.release("tiny-cn-a")
    with pytest.raises(NotFound):
        engine.acquire("no-such-controlnet")
