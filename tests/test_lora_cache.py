"""LoRA cache tiers: storage -> host shared memory (one copy per node) -> device, and the merge.

Covers: the host tier converts a LoRA file into its layers in one shared-memory segment and
answers later prepares as hits; it evicts least recently used LoRAs to stay within its byte
budget, keeps an evicted but recently fetched LoRA's segment until its pin ends, and unlinks
everything on close; two denoisers fetching over gRPC read the very same segment (no copy per
reader) and get the file's layers; the device tier evicts by its own byte budget and loads
each LoRA once for concurrent requests; merging LoRAs in place equals diffusers
``load_lora_weights`` + ``set_adapters`` + ``fuse_lora`` (weights and UNet output within
1e-4), and switching back restores the weights bit for bit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from diffusion.v1 import lora_cache_pb2, lora_cache_pb2_grpc
from services.common.channels import ChannelPool
from services.common.lora_files import pack
from services.common.lora_merge import NO_PATCH, LoraPatcher
from services.common.model_store import ModelStore
from services.common.server import ServiceRuntime
from services.common.settings import ServiceSettings
from services.common.transport import TensorExporter, TensorImporter, local_peer
from services.common.transport.shm import SHM_DIR
from services.denoiser.addons.lora import LoraSpec
from services.denoiser.lora_loader import LoraDeviceCache, LoraLoader, layers_nbytes, service_fetch
from services.denoiser.offline import read_lora_layers
from services.lora_cache.engine import LoraCacheEngine
from services.lora_cache.servicer import LoraCacheServicer

R4, R8 = "tiny-lora-r4", "tiny-lora-r8"


@pytest.fixture(scope="module")
def store(tiny_models: Path) -> ModelStore:
    return ModelStore(tiny_models)


def _segment_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


def test_host_tier_holds_one_segment_per_lora_and_counts_hits(store: ModelStore) -> None:
    engine = LoraCacheEngine(store, budget_bytes=64 << 20)
    try:
        first = engine.prepare(R4)
        second = engine.prepare(R4)
        assert (first.hit, second.hit) == (False, True)
        lora = engine.fetch(R4)
        assert _segment_exists(lora.segment.name) and lora.nbytes == first.nbytes
        expected, metadata = pack(store.loras.converted(R4).layers)
        assert set(lora.layout) == set(expected) and lora.metadata == metadata
        for key, value in expected.items():
            assert torch.equal(lora.tensor(key), value)
        assert (engine.hits, engine.misses) == (2, 1)
    finally:
        engine.close()
    assert not _segment_exists(lora.segment.name)


def test_host_tier_evicts_lru_and_drains_pinned_segments(store: ModelStore) -> None:
    probe = LoraCacheEngine(store, budget_bytes=64 << 20)
    sizes = {name: probe.prepare(name).nbytes for name in (R4, R8)}
    probe.close()
    engine = LoraCacheEngine(store, budget_bytes=max(sizes.values()) + 1, pin_s=3600)
    try:
        fetched = engine.fetch(R4)  # pinned for an hour
        engine.prepare(R8)  # over budget: R4, the least recently used, goes
        assert engine.names() == [R8] and engine.evictions == 1
        assert engine.draining() == 1 and _segment_exists(fetched.segment.name)
        engine.pin_s = 0.0
        r8 = engine.fetch(R8)
        engine.prepare(R4)  # R8 was fetched with a pin that has already ended
        assert engine.names() == [R4]
        assert engine.draining() == 1  # only the hour-pinned R4 segment is still waiting
        assert not _segment_exists(r8.segment.name)
    finally:
        engine.close()
    assert not _segment_exists(fetched.segment.name)


@pytest.fixture
def lora_server(store: ModelStore) -> Iterator[tuple[str, LoraCacheEngine]]:
    engine = LoraCacheEngine(store, budget_bytes=64 << 20)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    port = server.add_insecure_port("127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    exporter = TensorExporter(address, role="lora-test")
    runtime = ServiceRuntime("lora_cache", ServiceSettings(), address, exporter,
                             TensorImporter(), None)
    lora_cache_pb2_grpc.add_LoraCacheServicer_to_server(LoraCacheServicer(engine, runtime),
                                                        server)
    server.start()
    yield address, engine
    server.stop(grace=None)
    exporter.close()
    engine.close()


def test_denoisers_on_the_node_read_the_one_host_copy(store: ModelStore,
                                                      lora_server: tuple[str, Any]) -> None:
    address, engine = lora_server
    with grpc.insecure_channel(address) as channel:
        stub = lora_cache_pb2_grpc.LoraCacheStub(channel)
        status = stub.Prepare(lora_cache_pb2.PrepareLoraRequest(loras=[R4])).loras[0]
        assert not status.hit and status.nbytes > 0
        replies = [stub.Fetch(lora_cache_pb2.FetchLoraRequest(lora=R4, peer=local_peer()))
                   for _ in range(2)]
    segment = engine.fetch(R4).segment.name
    for reply in replies:
        assert {t.tensor.host_shm.segment for t in reply.tensors} == {segment}
    channels, importer = ChannelPool(), TensorImporter()
    try:
        layers = service_fetch(channels, importer)(LoraSpec(R4, 1.0, address), "req")
    finally:
        channels.close()
        importer.close()
    expected = read_lora_layers(store, [R4])[R4]
    assert layers.keys() == expected.keys()
    for module, layer in layers.items():
        assert torch.equal(layer.down, expected[module].down)
        assert torch.equal(layer.up, expected[module].up)


def test_device_tier_evicts_by_budget_and_loads_once(store: ModelStore) -> None:
    layers = read_lora_layers(store, [R4, R8])
    calls: list[str] = []
    release = threading.Event()

    def fetch(spec: LoraSpec, request_id: str) -> Any:
        calls.append(spec.name)
        release.wait(10)
        return layers[spec.name]

    cache = LoraDeviceCache(budget_bytes=max(layers_nbytes(v) for v in layers.values()))
    loader = LoraLoader(fetch, cache)
    try:
        pending = [loader.load([LoraSpec(R4, 1.0, "")], f"r{i}") for i in range(3)]
        release.set()  # the three requests met the one fetch in flight
        results = [f.result(timeout=10)[R4] for f in pending]
        assert calls == [R4] and all(r is results[0] for r in results)
        loader.load([LoraSpec(R8, 1.0, "")], "r3").result(timeout=10)
        assert cache.names() == [R8] and cache.evictions == 1
        loader.load([LoraSpec(R4, 1.0, ""), LoraSpec(R8, 1.0, "")], "r4").result(timeout=10)
        assert calls == [R4, R8, R4]
    finally:
        loader.close()


def test_in_place_merge_equals_diffusers_fuse_lora(store: ModelStore) -> None:
    from diffusers import StableDiffusionPipeline

    scales = {R4: 0.6, R8: 0.9}
    unet = store.load_unet("tiny-sd")
    pristine = {k: v.clone() for k, v in unet.state_dict().items()}
    patcher = LoraPatcher(unet)
    patch = tuple(sorted(scales.items()))
    patcher.apply(patch, read_lora_layers(store, list(scales)))
    pipe = StableDiffusionPipeline.from_pretrained(
        store.root / "tiny-sd", local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    for name in scales:
        pipe.load_lora_weights(str(store.lora_path(name)), adapter_name=name)
    pipe.set_adapters(list(scales), list(scales.values()))
    pipe.fuse_lora(adapter_names=list(scales))
    merged = dict(pipe.unet.named_modules())
    assert max((unet.get_submodule(m).weight - w).abs().max().item()
               for (m, _), w in patcher.pristine.items()) > 1e-3  # the LoRAs change the weights
    for module, _ in patcher.pristine:
        fused = merged[module].base_layer.weight
        assert (unet.get_submodule(module).weight - fused).abs().max().item() <= 1e-4, module
    torch.manual_seed(3)
    sample, embeds = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.inference_mode():
        ours = unet(sample, torch.tensor(700), embeds).sample
        theirs = pipe.unet(sample, torch.tensor(700), embeds).sample
    assert (ours - theirs).abs().max().item() <= 1e-4
    patcher.apply(NO_PATCH, {})
    for key, value in unet.state_dict().items():
        assert torch.equal(value, pristine[key]), key
