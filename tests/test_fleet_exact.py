"""The fleet computes what plain diffusers pipelines compute (max abs diff <= 1e-5).

Every service runs as its own process and every tensor between them goes by
shared memory. Covers text-to-image, one and two ControlNets, one and two
LoRAs with scales (a rank-stabilised one; a DoRA merged after another LoRA on
the same layers, in the request's order), image-to-image, inpainting with the 9-channel UNet, and
three concurrent requests of different workflows sharing one denoiser batch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from tests.diffusers_reference import reference, sample_image, sample_mask
from tests.fleet_specs import sdk_kwargs

TOLERANCE = 1e-5

CN_A = sample_image(1)
CN_B = sample_image(2)
INIT = sample_image(3)
MASK = sample_mask()

WORKFLOWS: dict[str, dict[str, Any]] = {
    "txt2img": dict(prompt="a red fox in snow", seed=11),
    "txt2img_negative": dict(prompt="a lighthouse", negative_prompt="fog", seed=12,
                             guidance_scale=5.0, steps=12),
    "txt2img_no_cfg": dict(prompt="a lighthouse", seed=13, guidance_scale=1.0),
    "txt2img_96x64": dict(prompt="a wide field", seed=14, width=96, height=64),
    "controlnet": dict(prompt="a house", seed=21, controlnets=[("tiny-cn-a", CN_A, 1.0)]),
    "two_controlnets": dict(prompt="a house", seed=22,
                            controlnets=[("tiny-cn-a", CN_A, 0.7), ("tiny-cn-b", CN_B, 1.2)]),
    "lora": dict(prompt="a portrait", seed=31, loras=[("tiny-lora-r4", 1.0)]),
    "two_loras": dict(prompt="a portrait", seed=32,
                      loras=[("tiny-lora-r4", 0.6), ("tiny-lora-r8", 0.9)]),
    "lora_rslora": dict(prompt="a portrait", seed=33, loras=[("tiny-lora-rslora", 1.2)]),
    "lora_dora_after_r4": dict(prompt="a portrait", seed=34,
                               loras=[("tiny-lora-r4", 0.7), ("tiny-lora-dora", 1.1)]),
    "img2img": dict(prompt="a painting of a bridge", seed=41, image=INIT, strength=0.7),
    "inpaint": dict(prompt="a cat on a sofa", seed=51, image=INIT, mask=MASK,
                    model="tiny-sd-inpainting"),
    "inpaint_strength": dict(prompt="a cat on a sofa", seed=52, image=INIT, mask=MASK,
                             strength=0.75, model="tiny-sd-inpainting"),
}


def fleet_image(address: str, spec: dict[str, Any]) -> tuple[np.ndarray, dict[str, str]]:
    kwargs = sdk_kwargs(spec)
    with dfleet.Client(address, timeout=120) as client:
        result = client.generate(return_pixels=True, **kwargs)
    assert result.pixels is not None
    return result.pixels, result.metadata


@pytest.mark.parametrize("name", sorted(WORKFLOWS))
def test_workflow_equals_diffusers(fleet: Any, tiny_models: Path, name: str) -> None:
    spec = WORKFLOWS[name]
    pixels, metadata = fleet_image(fleet.gateway_address, spec)
    expected = reference(tiny_models, **spec)
    assert pixels.shape == expected.shape
    assert np.abs(pixels - expected).max() <= TOLERANCE, metadata


def test_concurrent_workflows_share_a_batch_and_stay_exact(fleet: Any,
                                                           tiny_models: Path) -> None:
    specs = [dict(prompt="a ship", seed=61, steps=40),
             dict(prompt="a ship", seed=62, steps=40, controlnets=[("tiny-cn-a", CN_A, 1.0)]),
             dict(prompt="a ship", seed=63, steps=40, image=INIT, strength=0.9)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda s: fleet_image(fleet.gateway_address, s), specs))
    for spec, (pixels, metadata) in zip(specs, results, strict=True):
        assert int(metadata["denoise_batch_peak"]) >= 2, metadata
        assert np.abs(pixels - reference(tiny_models, **spec)).max() <= TOLERANCE
