"""Bounded asynchronous LoRA loading (BAL): the gate, the profiles and the engine.

Covers: the gate runs steps without the LoRAs until they are loaded, merges them at the first
step boundary after that, never lets a request pass step K without them (K = 0 waits before
the first step), and hands loading errors to the request; profiles pick K as the first step
below 0.99, round-trip through JSON, scale to other step counts, take the smallest K of a
request's LoRAs, mean exact (0) when missing and are found once written; the profile command
writes a profile the denoiser then uses for ``lora_async_steps = -1``; in the in-process
engine a LoRA that joins at step K gives exactly the trajectory "K steps without, the rest
with" (K = 0: the exact one), and a LoRA ready mid-way joins no earlier than it was ready and
no later than K; through the fleet a BAL request reports a join step within its bound, and a
bound over the step count is INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import torch

import dfleet
from services.common.lora_merge import NO_PATCH
from services.common.model_store import ModelStore
from services.denoiser import bal_profile
from services.denoiser.addons.lora import LoraRequest, LoraSpec
from services.denoiser.bal import BalProfile, BalProfiles, LoraGate
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import DenoiseJob, StepEvent
from services.denoiser.offline import encode_prompts, join_at, read_lora_layers, ready, run
from services.denoiser.request_state import prepare
from services.denoiser.unet_models import unet_loader

LORA = "tiny-lora-r8"
PATCH = ((LORA, 1.0),)


def test_gate_runs_without_the_lora_until_it_is_ready_and_never_past_k() -> None:
    loaded: Future[Any] = Future()
    gate = LoraGate(PATCH, loaded, bound=3)
    assert [gate.ready_for(step) for step in range(4)] == [True, True, True, False]
    assert gate.patch == NO_PATCH and not gate.patched
    loaded.set_result({LORA: {}})
    assert gate.ready_for(3) and gate.patch == PATCH and gate.patched_at == 3
    assert gate.layers == {LORA: {}}


def test_gate_joins_at_the_first_boundary_after_ready() -> None:
    loaded: Future[Any] = Future()
    gate = LoraGate(PATCH, loaded, bound=10)
    assert gate.ready_for(0) and gate.ready_for(1) and gate.patch == NO_PATCH
    loaded.set_result({LORA: {}})
    assert gate.ready_for(2) and gate.patched_at == 2 and gate.patch == PATCH


def test_gate_with_k_zero_waits_before_the_first_step_and_reports_errors() -> None:
    loaded: Future[Any] = Future()
    gate = LoraGate(PATCH, loaded, bound=0)
    assert not gate.ready_for(0)
    loaded.set_exception(RuntimeError("lora cache down"))
    with pytest.raises(RuntimeError, match="lora cache down"):
        gate.ready_for(0)
    assert LoraGate(NO_PATCH, None, bound=0).ready_for(0)


def test_profiles_pick_k_and_scale_it(tmp_path: Path) -> None:
    profiles = BalProfiles(tmp_path)
    assert profiles.bound(-1, "m", ["a"], 30) == 0  # no profile: exact
    assert profiles.bound(4, "m", ["a"], 30) == 4  # an explicit bound is used as given
    profile = BalProfile("m", "a", steps=30, similarity=[0.999, 0.995, 0.991, 0.98, 0.9])
    assert profile.bound == 3
    path = profiles.save(profile)
    assert json.loads(path.read_text())["bound"] == 3
    fresh = BalProfiles(tmp_path)
    assert fresh.get("m", "a") == BalProfile("m", "a", 30, profile.similarity)
    assert fresh.bound(-1, "m", ["a"], 30) == 3
    assert fresh.bound(-1, "m", ["a"], 60) == 6
    fresh.save(BalProfile("m", "b", steps=30, similarity=[0.999, 0.98]))
    assert fresh.bound(-1, "m", ["a", "b"], 30) == 1
    never_below = BalProfile("m", "c", 30, [0.999] * 31)
    assert never_below.bound == 31
    fresh.save(never_below)
    assert fresh.bound(-1, "m", ["c"], 30) == 29  # the LoRA still joins before the end


@pytest.fixture(scope="module")
def store(tiny_models: Path) -> ModelStore:
    return ModelStore(tiny_models)


@pytest.fixture(scope="module")
def engine(store: ModelStore) -> Any:
    running = DenoiserEngine(unet_loader(store).get)
    yield running
    running.stop()


def _job(store: ModelStore, name: str, steps: int = 10) -> DenoiseJob:
    positive, negative = encode_prompts(store, "tiny-sd", ["a portrait", ""])
    return DenoiseJob(request_id=name, model="tiny-sd", prompt_embeds=positive,
                      negative_prompt_embeds=negative, width=64, height=64,
                      num_inference_steps=steps, guidance_scale=7.5, seed=7,
                      addons={"lora": LoraRequest((LoraSpec(LORA, 1.0, ""),))})


def _joined_at(store: ModelStore, engine: DenoiserEngine, job: DenoiseJob,
               k: int) -> torch.Tensor:
    """The latents of ``job`` with the LoRA merged from step ``k`` on, step by step by hand."""
    model = engine.load_unet(job.model)
    layers = read_lora_layers(store, [LORA])
    state = prepare(job, model.info)
    with torch.inference_mode():
        while not state.done:
            model.patcher.apply(PATCH if state.index >= k else NO_PATCH, layers)
            sample = state.rows().sample
            t = state.timesteps[state.index].to(torch.float64).reshape(1).expand(state.rows_count)
            state.advance(model.halves.forward(sample, t, state.prompt_embeds))
    return state.latents


@pytest.mark.parametrize("k", [0, 4])
def test_lora_joining_at_k_gives_the_k_steps_without_trajectory(store: ModelStore,
                                                                engine: DenoiserEngine,
                                                                k: int) -> None:
    job = _job(store, f"join-{k}")
    loaded, on_step = join_at(read_lora_layers(store, [LORA]), k)
    final = run(engine, job, loras=loaded, bound=k, on_step=on_step)
    assert final.lora_step == k
    expected = _joined_at(store, engine, _job(store, f"ref-{k}"), k)
    assert (final.latents - expected).abs().max().item() <= 1e-5
    if k:
        exact = run(engine, _job(store, "exact"), loras=ready(read_lora_layers(store, [LORA])))
        assert exact.lora_step == 0
        assert (final.latents - exact.latents).abs().max().item() > 1e-4


def test_lora_ready_mid_way_joins_after_ready_and_by_k(store: ModelStore,
                                                       engine: DenoiserEngine) -> None:
    layers = read_lora_layers(store, [LORA])
    loaded: Future[Any] = Future()

    def on_step(event: StepEvent) -> None:
        if event.step == 2 and not loaded.done():
            loaded.set_result(layers)
    final = run(engine, _job(store, "mid", steps=12), loras=loaded, bound=8, on_step=on_step)
    assert final.lora_step is not None and 2 <= final.lora_step <= 8


def test_profile_command_writes_the_profile_the_denoiser_uses(tiny_models: Path,
                                                              tmp_path: Path) -> None:
    code = bal_profile.main(["--models-dir", str(tiny_models), "--model", "tiny-sd",
                             "--lora", LORA, "--steps", "6", "--prompts", "1",
                             "--profiles-dir", str(tmp_path)])
    assert code == 0
    data = json.loads((tmp_path / f"tiny-sd__{LORA}.json").read_text())
    similarity = data["similarity"]
    assert len(similarity) >= 6 and all(-1.0 <= s <= 1.0 + 1e-9 for s in similarity)
    assert data["bound"] == next((i for i, s in enumerate(similarity) if s < 0.99),
                                 len(similarity))
    assert BalProfiles(tmp_path).bound(-1, "tiny-sd", [LORA], 6) == data["bound"]


def test_fleet_bal_request_joins_within_its_bound(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        result = client.generate(prompt="a portrait", seed=31, steps=10, return_pixels=True,
                                 loras=[dfleet.Lora(LORA, 1.0)],
                                 approximations=dfleet.Approximations(lora_async_steps=5))
        assert 0 <= int(result.metadata["lora_joined_step"]) <= 5
        with pytest.raises(dfleet.InvalidArgument) as failure:
            client.generate(prompt="a portrait", seed=31, steps=10,
                            loras=[dfleet.Lora(LORA, 1.0)],
                            approximations=dfleet.Approximations(lora_async_steps=11))
    assert failure.value.field == "approximations.lora_async_steps"
