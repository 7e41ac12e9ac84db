"""Integration (tiny model, in process): a denoiser engine with ``max_active_requests``
runs submitted requests first come first served, each exact, and measures its step time
for the heartbeat; a request cancelled while it waits ends without running a step."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from services.common.errors import FleetError
from services.common.model_store import ModelStore
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import DenoiseJob, ErrorEvent, FinalEvent, StepEvent
from services.denoiser.offline import encode_prompts, run
from services.denoiser.unet_models import unet_loader


@pytest.fixture(scope="module")
def store(tiny_models: Path) -> ModelStore:
    return ModelStore(tiny_models)


def _job(store: ModelStore, name: str, seed: int) -> DenoiseJob:
    positive, negative = encode_prompts(store, "tiny-sd", ["a lighthouse", ""])
    return DenoiseJob(request_id=name, model="tiny-sd", prompt_embeds=positive,
                      negative_prompt_embeds=negative, width=64, height=64,
                      num_inference_steps=6, guidance_scale=7.5, seed=seed)


def _drain(job: DenoiseJob, log: list[tuple[str, int]], out: dict[str, Any]) -> None:
    while True:
        event = job.events.get(timeout=120)
        if isinstance(event, StepEvent):
            log.append((job.request_id, event.step))
        elif isinstance(event, FinalEvent | ErrorEvent):
            out[job.request_id] = event
            return


def test_one_active_request_runs_them_in_order_and_exact(store: ModelStore) -> None:
    unlimited = DenoiserEngine(unet_loader(store).get)
    engine = DenoiserEngine(unet_loader(store).get, max_active_requests=1)
    try:
        expected = {f"r{i}": run(unlimited, _job(store, f"r{i}", seed=i)).latents
                    for i in range(3)}
        jobs = [_job(store, f"r{i}", seed=i) for i in range(3)]
        log: list[tuple[str, int]] = []
        out: dict[str, Any] = {}
        drains = [threading.Thread(target=_drain, args=(job, log, out)) for job in jobs]
        for thread in drains:
            thread.start()
        for job in jobs:
            engine.submit(job)
        for thread in drains:
            thread.join(timeout=120)
        order = [rid for rid, _ in log]
        assert order == sorted(order), "steps of different requests interleaved"
        for rid, latents in expected.items():
            assert isinstance(out[rid], FinalEvent)
            assert out[rid].batch_peak == 1
            assert torch.equal(out[rid].latents, latents)
        assert engine.load() == 0
        assert engine.step_ms() > 0  # what its heartbeat reports to the gateway
    finally:
        engine.stop()
        unlimited.stop()


def test_a_request_cancelled_while_waiting_ends_without_a_step(store: ModelStore) -> None:
    engine = DenoiserEngine(unet_loader(store).get, max_active_requests=1)
    try:
        first, second = _job(store, "first", 1), _job(store, "second", 2)
        second.cancelled.set()
        engine.submit(first)
        engine.submit(second)
        events: list[Any] = []
        while not events or not isinstance(events[-1], FinalEvent | ErrorEvent):
            events.append(second.events.get(timeout=120))
        assert not any(isinstance(e, StepEvent) for e in events)
        assert isinstance(events[-1], ErrorEvent)
        assert isinstance(events[-1].error, FleetError)
        while True:
            try:
                event = first.events.get(timeout=120)
            except queue.Empty:
                pytest.fail("the running request did not finish")
            if isinstance(event, FinalEvent | ErrorEvent):
                break
        assert isinstance(event, FinalEvent)
    finally:
        engine.stop()
