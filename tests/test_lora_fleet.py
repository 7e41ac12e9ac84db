"""LoRA files as users download them, through the fleet (every service its own process, every
tensor by shared memory): each image equals diffusers' ``load_lora_weights`` +
``set_adapters`` on the same file and scale (<= 1e-4 on the float image).

Covers, per family: a Kohya/A1111 SD1.5 file with UNet convolution layers and text-encoder
layers (merged by the text encoder service), a Kohya SDXL file with sgm block names and
layers for both text encoders, the same with a peft LoRA after it; a request without LoRAs
gives the same image, bit for bit, before and after one whose LoRA changed the text encoder's
and the UNet's weights (they are restored). A LoRA of another family is refused before any
compute, naming ``loras[i].name``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from tests.diffusers_reference import reference_images

TOLERANCE = 1e-4

CASES: dict[str, dict[str, Any]] = {
    "sd15_kohya_text_encoder": dict(prompt="a portrait", seed=71,
                                    loras=[("tiny-lora-kohya", 0.8)]),
    "sdxl_kohya_both_encoders": dict(prompt="a portrait", seed=72, model="tiny-sdxl",
                                     loras=[("tiny-sdxl-lora-kohya", 0.7)]),
    "sdxl_kohya_then_peft": dict(prompt="a portrait", seed=73, model="tiny-sdxl",
                                 loras=[("tiny-sdxl-lora-kohya", 0.6), ("tiny-sdxl-lora", 0.9)]),
}


def generate(address: str, spec: dict[str, Any]) -> np.ndarray:
    kwargs = dict(spec)
    kwargs["loras"] = [dfleet.Lora(n, scale=s) for n, s in kwargs.pop("loras", [])]
    with dfleet.Client(address, timeout=120) as client:
        result = client.generate(return_pixels=True, steps=8, **kwargs)
    assert result.pixels is not None
    return result.pixels


def test_loras_then_none_leave_the_weights_as_they_were(fleet: Any) -> None:
    plain = dict(prompt="a quiet lake", seed=70)
    before = generate(fleet.gateway_address, plain)
    generate(fleet.gateway_address, CASES["sd15_kohya_text_encoder"])
    assert np.array_equal(generate(fleet.gateway_address, plain), before)


@pytest.mark.parametrize("name", sorted(CASES))
def test_lora_file_equals_diffusers(fleet: Any, tiny_models: Path, name: str) -> None:
    spec = CASES[name]
    pixels = generate(fleet.gateway_address, spec)
    expected = reference_images(tiny_models, steps=8, **spec)[0]
    assert np.abs(pixels - expected).max() <= TOLERANCE


@pytest.mark.parametrize("model, lora", [("tiny-sd", "tiny-sdxl-lora-kohya"),
                                         ("tiny-sdxl", "tiny-lora-r4")])
def test_a_lora_of_another_family_is_refused_naming_the_field(fleet: Any, model: str,
                                                              lora: str) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.InvalidArgument) as refused:
            client.generate("a fox", model=model, steps=2,
                            loras=[dfleet.Lora("tiny-sdxl-lora" if model == "tiny-sdxl"
                                               else "tiny-lora-r8"), dfleet.Lora(lora)])
    assert refused.value.field == "loras[1].name"
    assert "LoRA" in str(refused.value) and "model" in str(refused.value)
