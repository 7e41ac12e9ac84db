"""CUDA graphs of the UNet halves and of the ControlNet (GPU only; skipped without CUDA).

Covers: ``GraphedHalves`` gives what the eager halves give (fp32, so equality is to 1e-4 on
the GPU) with and without ControlNet residuals, replays after the first call of a shape, and
sees a LoRA patch merged in place after capture; ``GraphedControlNet`` residuals scaled
afterwards equal the eager model called with that scale; the in-process engine with graphs
equals the engine without them for a ControlNet request.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.lora_merge import LoraPatcher
from services.common.model_store import ModelStore
from services.controlnet.cuda_graph import GraphedControlNet
from services.denoiser.addons.controlnet import ControlNetRequest, ControlNetSpec
from services.denoiser.cuda_graphs import GraphedHalves
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import DenoiseJob
from services.denoiser.local_controlnet import LocalControlNetLink
from services.denoiser.offline import encode_prompts, read_lora_layers, run
from services.denoiser.unet_halves import UnetHalves
from services.denoiser.unet_models import unet_loader

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def store(tiny_models: Path) -> ModelStore:
    return ModelStore(tiny_models)


def test_graphed_halves_equal_eager_and_see_lora_patches(store: ModelStore) -> None:
    unet = store.load_unet("tiny-sd").to("cuda")
    eager, graphed = UnetHalves(unet), GraphedHalves(UnetHalves(unet))
    torch.manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, device="cuda")
    t = torch.full((2,), 500.0, dtype=torch.float64, device="cuda")
    embeds = torch.randn(2, 77, 32, device="cuda")
    with torch.inference_mode():
        shapes = eager.down_mid(sample, t, embeds)
        down = [torch.randn_like(s) for s in shapes.skips]
        mid = torch.randn_like(shapes.sample)
        for residuals in ((None, None), (down, mid)):
            expected = eager.forward(sample, t, embeds, None, *residuals)
            for _ in range(3):  # eager + capture, then replays
                state = graphed.down_mid(sample, t, embeds)
                got = graphed.up(state, *residuals)
                assert (got - expected).abs().max().item() <= TOLERANCE
        assert graphed.replays >= 2
        patcher = LoraPatcher(unet)
        patcher.apply((("tiny-lora-r4", 1.0),), read_lora_layers(store, ["tiny-lora-r4"]))
        expected = eager.forward(sample, t, embeds, None, down, mid)
        got = graphed.up(graphed.down_mid(sample, t, embeds), down, mid)
        assert (got - expected).abs().max().item() <= TOLERANCE


def test_graphed_controlnet_equals_eager(store: ModelStore) -> None:
    model = store.load_controlnet("tiny-cn-a").to("cuda")
    graphed = GraphedControlNet(model)
    torch.manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, device="cuda")
    embeds = torch.randn(2, 77, 32, device="cuda")
    cond = torch.rand(2, 3, 64, 64, device="cuda")
    t = torch.tensor(400.0, dtype=torch.float64, device="cuda")
    with torch.inference_mode():
        down, mid = model(latents, t, encoder_hidden_states=embeds, controlnet_cond=cond,
                          conditioning_scale=0.6, return_dict=False)
        for _ in range(3):
            g_down, g_mid = graphed(latents, t, embeds, cond)
            assert ((g_mid * 0.6) - mid).abs().max().item() <= TOLERANCE
            for a, b in zip(g_down, down, strict=True):
                assert ((a * 0.6) - b).abs().max().item() <= TOLERANCE
    assert graphed.replays >= 2


def test_engine_with_graphs_equals_engine_without(store: ModelStore) -> None:
    positive, negative = encode_prompts(store, "tiny-sd", ["a house", ""])
    controlnet = store.load_controlnet("tiny-cn-a").to("cuda")
    cond = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    results = []
    for graphs in (False, True):
        engine = DenoiserEngine(unet_loader(store, "cuda", cuda_graphs=graphs).get)
        try:
            job = DenoiseJob(request_id=f"g{graphs}", model="tiny-sd", prompt_embeds=positive,
                             negative_prompt_embeds=negative, width=64, height=64,
                             num_inference_steps=6, guidance_scale=7.5, seed=3,
                             addons={"controlnet": ControlNetRequest(
                                 (ControlNetSpec("tiny-cn-a", "", cond),))})
            link = LocalControlNetLink(controlnet, torch.cat([cond] * 2),
                                       torch.cat([negative, positive]))
            results.append(run(engine, job, [link]).latents.cpu())
        finally:
            engine.stop()
    assert (results[0] - results[1]).abs().max().item() <= TOLERANCE
