"""Request priority: the denoiser's waiting queue starts the highest priority first, then the
oldest (in process: a denoiser engine on the tiny model, its first request held in its step so
that the others queue behind it), and the gateway lets requests below priority 0 fill only
part of its in-flight limit (its admission, unit)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.model_store import ModelStore
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import DenoiseJob, ErrorEvent, FinalEvent
from services.denoiser.offline import encode_prompts
from services.denoiser.request_state import prepare
from services.denoiser.step_batch import run_batch
from services.denoiser.unet_models import unet_loader
from services.denoiser.work import DenoiseWork
from services.gateway.servicer import GatewayServicer
from services.gateway.workflows.service import check_priority


def _job(store: ModelStore, name: str, priority: int) -> DenoiseJob:
    positive, negative = encode_prompts(store, "tiny-sd", ["a lighthouse", ""])
    return DenoiseJob(request_id=name, model="tiny-sd", prompt_embeds=positive,
                      negative_prompt_embeds=negative, width=64, height=64,
                      num_inference_steps=2, guidance_scale=7.5, seed=1, priority=priority)


def test_a_higher_priority_request_overtakes_the_queue(tiny_models: Path) -> None:
    store = ModelStore(tiny_models)
    started: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def runner(model: Any, group: list[DenoiseWork]) -> Any:
        for work in group:
            if work.request_id not in started:
                started.append(work.request_id)
        if group[0].request_id == "first":
            holding.set()
            release.wait(60)    # the first request holds the only active slot
        return run_batch(model, group)

    engine = DenoiserEngine(unet_loader(store).get, runner=runner, max_active_requests=1)
    try:
        info = engine.load_unet("tiny-sd").info
        jobs = {name: _job(store, name, priority) for name, priority in
                (("first", 0), ("low-a", 0), ("low-b", 0), ("urgent", 5), ("background", -3))}
        works = {name: DenoiseWork(engine.compute.run(prepare, job, info), [])
                 for name, job in jobs.items()}
        engine.add(works["first"], limited=True, priority=0)
        assert holding.wait(60), "the first request did not start"
        for name in ("background", "low-a", "low-b", "urgent"):
            engine.add(works[name], limited=True, priority=jobs[name].priority)
        release.set()
        for job in jobs.values():
            while not isinstance(event := job.events.get(timeout=120), FinalEvent | ErrorEvent):
                pass
            assert isinstance(event, FinalEvent), event
        assert started == ["first", "urgent", "low-a", "low-b", "background"]
    finally:
        release.set()
        engine.stop()


class _Settings:
    max_inflight = 4


def test_gateway_admission_keeps_room_for_priority_zero_and_above() -> None:
    servicer = GatewayServicer(_Settings(), None, None, None, None, None)  # type: ignore[arg-type]
    servicer._admit("low-1", -1)
    servicer._admit("low-2", -5)
    with pytest.raises(ResourceExhausted) as caught:
        servicer._admit("low-3", -1)
    assert "priority below 0" in caught.value.message
    servicer._admit("normal-1", 0)
    servicer._admit("high-1", 3)
    with pytest.raises(ResourceExhausted):
        servicer._admit("high-2", 10)
    assert servicer.inflight() == 4


def test_priority_range() -> None:
    assert check_priority(-10) == -10 and check_priority(10) == 10
    with pytest.raises(InvalidArgument) as caught:
        check_priority(11)
    assert caught.value.field == "priority"
