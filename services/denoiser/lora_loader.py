"""The device tier of the LoRA cache: LoRA layers on the UNet's device, fetched in the background.

The node's LoRA cache service holds LoRAs in host shared memory, converted into
per-module layers; this replica fetches one on first use (from shared memory
when on the same host), takes its denoiser's layers onto its device and keeps
them within a byte budget,
least recently used first out. A request being served keeps its layers even
if they are evicted meanwhile; the budget is what the cache itself holds.

Loading runs in a small thread pool and returns a future, so the step loop
can start a request before its LoRAs are ready (BAL).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

import torch

from services.common.channels import ChannelPool
from services.common.lora_fetch import fetch_layers
from services.common.lora_files import denoiser_layers
from services.common.lora_merge import Layers
from services.common.telemetry.tracing import ContextThreadPool
from services.common.transport import TensorImporter
from services.denoiser.addons.base import LoraLayers
from services.denoiser.addons.lora import LoraSpec

log = logging.getLogger("dfleet.denoiser")


def layers_nbytes(layers: Layers) -> int:
    return sum(layer.nbytes() for layer in layers.values())


class LoraDeviceCache:
    """Thread-safe LRU of parsed LoRAs within ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, Layers] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, name: str) -> Layers | None:
        with self._lock:
            layers = self._entries.get(name)
            if layers is None:
                self.misses += 1
                return None
            self._entries.move_to_end(name)
            self.hits += 1
            return layers

    def put(self, name: str, layers: Layers) -> None:
        size = layers_nbytes(layers)
        with self._lock:
            if name in self._entries:
                return
            if size > self.budget_bytes:
                log.warning("LoRA %s (%d bytes) is over the device budget; not cached", name, size)
                return
            self._entries[name] = layers
            self._bytes += size
            while self._bytes > self.budget_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= layers_nbytes(dropped)
                self.evictions += 1

    def names(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes


Fetch = Callable[[LoraSpec, str], Layers]


class LoraLoader:
    """Futures of LoRA layers on ``device``; one fetch per name at a time."""

    def __init__(self, fetch: Fetch, cache: LoraDeviceCache, device: str | torch.device = "cpu",
                 threads: int = 2) -> None:
        self.fetch = fetch
        self.cache = cache
        self.device = torch.device(device)
        self._pool = ContextThreadPool(max_workers=threads, thread_name_prefix="lora-load")
        self._inflight: dict[str, Future[Layers]] = {}
        self._lock = threading.Lock()

    def load(self, specs: list[LoraSpec], request_id: str) -> Future[LoraLayers]:
        """Every LoRA of a request, as one future (done at once when all are cached)."""
        parts = {spec.name: self._one(spec, request_id) for spec in specs}
        combined: Future[LoraLayers] = Future()
        remaining = [len(parts)]
        lock = threading.Lock()

        def done(_: Future[Layers]) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            try:
                combined.set_result({name: f.result() for name, f in parts.items()})
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                combined.set_exception(exc)

        if not parts:
            combined.set_result({})
        for part in parts.values():
            part.add_done_callback(done)
        return combined

    def _one(self, spec: LoraSpec, request_id: str) -> Future[Layers]:
        cached = self.cache.get(spec.name)
        if cached is not None:
            ready: Future[Layers] = Future()
            ready.set_result(cached)
            return ready
        with self._lock:
            future = self._inflight.get(spec.name)
            if future is None:
                future = self._pool.submit(self._fetch, spec, request_id)
                self._inflight[spec.name] = future
        return future

    def _fetch(self, spec: LoraSpec, request_id: str) -> Layers:
        try:
            layers = {module: layer.to(self.device)
                      for module, layer in self.fetch(spec, request_id).items()}
            self.cache.put(spec.name, layers)
            return layers
        finally:
            with self._lock:
                self._inflight.pop(spec.name, None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def service_fetch(channels: ChannelPool, importer: TensorImporter) -> Fetch:
    """Reads a LoRA's denoiser layers from the LoRA cache service named in its spec."""

    def fetch(spec: LoraSpec, request_id: str) -> Layers:
        return denoiser_layers(fetch_layers(channels, importer, spec.address, spec.name,
                                            request_id))
    return fetch
