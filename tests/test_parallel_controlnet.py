"""Parallel ControlNet: the split UNet forward, the order of one batch step, serial == parallel,
and the stale-residual schedule.

Covers: ``UnetHalves`` equals ``UNet2DConditionModel.forward`` for SD1.5- and SDXL-shaped UNets,
with and without ControlNet residuals, also at sizes that need explicit upsample sizes; in one
batch step every ControlNet is sent its inputs before the down blocks run and is read only
before the up blocks (serial: before the down blocks); the in-process engine gives the same
latents with ControlNets run in parallel and serially (one and two ControlNets, <= 1e-5); a
ControlNet that fails fails only its own request in a shared batch; the stale schedule's
sends, reads and residuals per step; through the fleet, the stale switch gives
an image close to but not equal to the exact one. Two ControlNets of one request on two
replicas are covered by test_cfg_parallel.py, whose fleet has two ControlNet replicas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

import dfleet
from services.common.lora_merge import LoraPatcher
from services.common.model_store import ModelStore
from services.denoiser.addons.base import Residuals, StepRows
from services.denoiser.addons.controlnet import ControlNetAddon, ControlNetRequest, ControlNetSpec
from services.denoiser.controlnet_set import ControlNetSet
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import DenoiseJob
from services.denoiser.local_controlnet import LocalControlNetLink
from services.denoiser.offline import encode_prompts, run
from services.denoiser.request_state import ModelInfo
from services.denoiser.step_batch import LoadedUnet, run_batch
from services.denoiser.unet_halves import UnetHalves
from services.denoiser.unet_models import unet_loader
from services.denoiser.work import DenoiseWork
from tests.diffusers_reference import reference, sample_image

TOLERANCE = 1e-5


def _sd15_unet() -> Any:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8).eval()


def _sdxl_unet() -> Any:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
        transformer_layers_per_block=(1, 2), use_linear_projection=True).eval()


@pytest.mark.parametrize("shape", ["sd15", "sdxl"])
@pytest.mark.parametrize("size", [(8, 8), (12, 10)])
def test_split_forward_equals_unet_forward(shape: str, size: tuple[int, int]) -> None:
    unet = _sd15_unet() if shape == "sd15" else _sdxl_unet()
    halves = UnetHalves(unet)
    torch.manual_seed(1)
    sample = torch.randn(2, 4, *size)
    timesteps = torch.tensor([801.0, 801.0], dtype=torch.float64)
    embeds = torch.randn(2, 7, unet.config.cross_attention_dim)
    added = ({"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)}
             if shape == "sdxl" else None)
    with torch.inference_mode():
        plain = unet(sample, timesteps, embeds, added_cond_kwargs=added).sample
        assert torch.equal(halves.forward(sample, timesteps, embeds, added), plain)
        state = halves.down_mid(sample, timesteps, embeds, added)
        down = [torch.randn_like(s) for s in state.skips]
        mid = torch.randn_like(state.sample)
        expected = unet(sample, timesteps, embeds, added_cond_kwargs=added,
                        down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
        assert torch.equal(halves.up(state, down, mid), expected)


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []


class _RecordingLink:
    def __init__(self, log: _Log, name: str, residuals: Residuals
                 ) -> None:
        self.log, self.name, self.residuals = log, name, residuals

    def send(self, step: int, latents: torch.Tensor, timestep: torch.Tensor,
             scale: float) -> None:
        self.log.events.append(f"send {self.name} {step}")

    def receive(self) -> Residuals:
        self.log.events.append(f"receive {self.name}")
        return self.residuals

    def close(self) -> None:
        pass


class _RecordingHalves(UnetHalves):
    def __init__(self, unet: Any, log: _Log) -> None:
        super().__init__(unet)
        self.log = log

    def down_mid(self, *args: Any, **kwargs: Any) -> Any:
        self.log.events.append("down_mid")
        return super().down_mid(*args, **kwargs)

    def up(self, *args: Any, **kwargs: Any) -> Any:
        self.log.events.append("up")
        return super().up(*args, **kwargs)


class _OneStep:
    """A sampler of one step of given rows, keeping the model's output."""

    def __init__(self, sample: torch.Tensor, embeds: torch.Tensor) -> None:
        self.request_id, self.model, self.step, self.latents = "w", "m", 0, None
        self.sample, self.embeds = sample, embeds
        self.noise: torch.Tensor | None = None

    def rows(self) -> StepRows:
        return StepRows(self.sample, self.sample, torch.tensor(500), self.embeds, ("cond",))

    def advance(self, noise: torch.Tensor) -> None:
        self.noise = noise


def _one_step(controls: ControlNetSet, sample: torch.Tensor, embeds: torch.Tensor,
              parallel: bool = True) -> DenoiseWork:
    scales = [[1.0] * len(controls.links)]
    return DenoiseWork(_OneStep(sample, embeds),  # type: ignore[arg-type]
                       [ControlNetAddon(controls, scales, parallel)])


@pytest.mark.parametrize("parallel", [True, False])
def test_batch_step_sends_to_every_controlnet_before_reading_any(parallel: bool) -> None:
    unet = _sd15_unet()
    log = _Log()
    halves = _RecordingHalves(unet, log)
    torch.manual_seed(2)
    sample, embeds = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)
    with torch.inference_mode():
        shapes = halves.down_mid(sample, torch.tensor([1.0]), embeds)
    residuals = ([torch.randn_like(s) for s in shapes.skips], [torch.randn_like(shapes.sample)])
    log.events.clear()
    links = [_RecordingLink(log, "a", residuals), _RecordingLink(log, "b", residuals)]
    works = [_one_step(ControlNetSet(links, 1), sample, embeds, parallel)]
    model = LoadedUnet(unet, ModelInfo({}, 0.18, 8, 4), LoraPatcher(unet), halves)
    with torch.inference_mode():
        assert run_batch(model, works) == [True]
    if parallel:
        assert log.events == ["send a 0", "send b 0", "down_mid", "receive a", "receive b", "up"]
    else:
        assert log.events == ["send a 0", "send b 0", "receive a", "receive b", "down_mid", "up"]


@pytest.fixture(scope="module")
def store(tiny_models: Path) -> ModelStore:
    return ModelStore(tiny_models)


def _controlnet_job(store: ModelStore, seed: int, names: list[str]) -> tuple[DenoiseJob, list]:
    positive, negative = encode_prompts(store, "tiny-sd", ["a house by a lake", ""])
    specs = [ControlNetSpec(name, "", cond_image=torch.rand(1, 3, 64, 64,
                                                            generator=torch.Generator()
                                                            .manual_seed(seed + i)),
                            scale=0.8 + 0.3 * i) for i, name in enumerate(names)]
    job = DenoiseJob(request_id=f"cn-{seed}", model="tiny-sd", prompt_embeds=positive,
                     negative_prompt_embeds=negative, width=64, height=64,
                     num_inference_steps=8, guidance_scale=7.5, seed=seed,
                     addons={"controlnet": ControlNetRequest(tuple(specs))})
    rows = torch.cat([negative, positive])
    links = []
    for spec in specs:
        model = ControlNetModel.from_pretrained(store.root / "controlnets" / spec.name,
                                                local_files_only=True).eval()
        links.append(LocalControlNetLink(model, torch.cat([spec.cond_image] * 2), rows))
    return job, links


@pytest.mark.parametrize("names", [["tiny-cn-a"], ["tiny-cn-a", "tiny-cn-b"]])
def test_parallel_controlnet_equals_serial(store: ModelStore, names: list[str]) -> None:
    unets = unet_loader(store)
    results = []
    for parallel in (True, False):
        engine = DenoiserEngine(unets.get)
        try:
            job, links = _controlnet_job(store, 5, names)
            results.append(run(engine, job, links, parallel_controlnet=parallel).latents)
        finally:
            engine.stop()
    assert (results[0] - results[1]).abs().max().item() <= TOLERANCE


def test_stale_schedule_reads_the_previous_steps_residuals() -> None:
    log = _Log()

    class Counting(_RecordingLink):
        def __init__(self) -> None:
            super().__init__(log, "a", ([], [torch.zeros(())]))
            self.sent: list[int] = []

        def send(self, step: int, latents: torch.Tensor, timestep: torch.Tensor,
                 scale: float) -> None:
            super().send(step, latents, timestep, scale)
            self.sent.append(step)

        def receive(self) -> Residuals:
            super().receive()
            step = self.sent.pop(0)
            return [torch.full((1,), float(step))], [torch.full((1,), float(step))]

    link = Counting()
    controls = ControlNetSet([link], total_steps=5, stale=True)
    used = []
    for step in range(5):
        controls.send(step, torch.zeros(1), torch.tensor(0), [1.0])
        residuals = controls.residuals()
        assert residuals is not None
        used.append(int(residuals[1][0].item()))
    assert used == [0, 0, 1, 2, 3]
    assert [e for e in log.events if e.startswith("send")] == [f"send a {s}" for s in range(4)]
    assert link.sent == []  # every send was read


def test_stale_switch_through_the_fleet_is_close_but_not_exact(fleet: Any,
                                                               tiny_models: Path) -> None:
    from skimage.metrics import peak_signal_noise_ratio

    image = sample_image(1)
    spec = dict(prompt="a house", seed=21, steps=20)
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        stale = client.generate(return_pixels=True,
                                controlnets=[dfleet.ControlNet("tiny-cn-a", image=image)],
                                approximations=dfleet.Approximations(stale_controlnet=True),
                                **spec)
    exact = reference(tiny_models, controlnets=[("tiny-cn-a", image, 1.0)], **spec)
    assert stale.pixels is not None
    assert np.abs(stale.pixels - exact).max() > 1e-3
    assert peak_signal_noise_ratio(exact, stale.pixels, data_range=1.0) > 20.0


def test_a_failing_controlnet_fails_only_its_own_work() -> None:
    unet = _sd15_unet()
    torch.manual_seed(3)
    sample, embeds = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)

    class Broken(_RecordingLink):
        def receive(self) -> Residuals:
            raise RuntimeError("controlnet replica went away")

    broken = _one_step(ControlNetSet([Broken(_Log(), "x", ([], [torch.zeros(())]))], 1),
                       sample, embeds)
    fine = _one_step(ControlNetSet([], 1), sample.clone(), embeds.clone())
    model = LoadedUnet(unet, ModelInfo({}, 0.18, 8, 4), LoraPatcher(unet), UnetHalves(unet))
    with torch.inference_mode():
        outcomes = run_batch(model, [broken, fine])
        expected = unet(sample, torch.tensor([500.0], dtype=torch.float64), embeds).sample
    assert isinstance(outcomes[0], RuntimeError) and outcomes[1] is True
    broken_noise, fine_noise = broken.sampler.noise, fine.sampler.noise  # type: ignore[attr-defined]
    assert broken_noise is None and fine_noise is not None
    assert (fine_noise - expected).abs().max().item() <= TOLERANCE  # batched with another
