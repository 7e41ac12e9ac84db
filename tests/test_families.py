"""Model families through the fleet: each workflow of each family equals diffusers' own pipeline
on the same folder and seed (max |difference| <= 1e-5 on the float image), every service its
own process and every tensor by shared memory.

SDXL (two text encoders, pooled embeddings and time ids on the wire, an empty negative prompt
zeroed as its pipelines do): text-to-image with and without guidance and with a negative
prompt, image-to-image, inpainting with the 9-channel UNet at strength 1 and 0.75, one and two
ControlNets, one and two LoRAs, a ControlNet with a LoRA, an SDXL IP-Adapter; a template edit
(exact) and a LoRA under BAL. Bad
combinations (an SD1.5 ControlNet or IP-Adapter on SDXL, a size off the family's grid) are
refused before any compute, naming the field; ListModels says each model's family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from tests.diffusers_reference import reference_images, sample_image, sample_mask
from tests.fleet_specs import sdk_kwargs

TOLERANCE = 1e-5
CN_A, CN_B, INIT, MASK = sample_image(1), sample_image(2), sample_image(3), sample_mask()

SDXL: dict[str, dict[str, Any]] = {
    "txt2img": dict(prompt="a red fox in snow", seed=11),
    "negative": dict(prompt="a lighthouse", negative_prompt="fog", seed=12, guidance_scale=5.0),
    "no_cfg": dict(prompt="a lighthouse", seed=13, guidance_scale=1.0),
    "img2img": dict(prompt="a bridge", seed=41, image=INIT, strength=0.7),
    "inpaint": dict(prompt="a cat", seed=51, image=INIT, mask=MASK,
                    model="tiny-sdxl-inpainting"),
    "inpaint_strength": dict(prompt="a cat", seed=52, image=INIT, mask=MASK, strength=0.75,
                             model="tiny-sdxl-inpainting"),
    "controlnet": dict(prompt="a house", seed=21, controlnets=[("tiny-sdxl-cn", CN_A, 1.0)]),
    "two_controlnets": dict(prompt="a house", seed=22, controlnets=[
        ("tiny-sdxl-cn", CN_A, 0.7), ("tiny-sdxl-cn-b", CN_B, 1.2)]),
    "lora": dict(prompt="a portrait", seed=31, loras=[("tiny-sdxl-lora", 1.0)]),
    "two_loras": dict(prompt="a portrait", seed=32, loras=[("tiny-sdxl-lora", 0.6),
                                                          ("tiny-sdxl-lora-b", 0.9)]),
    "controlnet_lora": dict(prompt="a house", seed=33, controlnets=[("tiny-sdxl-cn", CN_A, 0.8)],
                            loras=[("tiny-sdxl-lora", 0.7)]),
    "ip_adapter": dict(prompt="a cat", seed=35, ip_adapters=[("tiny-sdxl-ip-adapter", CN_B, 0.8)]),
}


def generate(address: str, spec: dict[str, Any], **extra: Any) -> dfleet.Result:
    kwargs = sdk_kwargs(spec)
    kwargs.setdefault("model", "tiny-sdxl")
    with dfleet.Client(address, timeout=120) as client:
        return client.generate(return_pixels=True, steps=8, **kwargs, **extra)


@pytest.mark.parametrize("name", sorted(SDXL))
def test_sdxl_equals_diffusers(fleet: Any, tiny_models: Path, name: str) -> None:
    spec = SDXL[name]
    result = generate(fleet.gateway_address, spec)
    expected = reference_images(tiny_models, steps=8, **{"model": "tiny-sdxl", **spec})[0]
    assert result.pixels is not None and result.pixels.shape == expected.shape
    assert np.abs(result.pixels - expected).max() <= TOLERANCE, result.metadata


@pytest.mark.parametrize("field, kwargs", [
    ("controlnets[0].name", dict(controlnets=[dfleet.ControlNet("tiny-cn-a", CN_A)])),
    ("ip_adapters[0].name", dict(ip_adapters=[dfleet.IpAdapter("tiny-ip-adapter", CN_A)])),
    ("width", dict(width=60)),
])
def test_bad_combinations_are_refused_naming_the_field(fleet: Any, field: str,
                                                       kwargs: dict[str, Any]) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.InvalidArgument) as failure:
            client.generate("a cat", model="tiny-sdxl", seed=1, steps=2, **kwargs)
        assert failure.value.field == field, failure.value
        client.generate("a cat", model="tiny-sdxl", seed=1, steps=2)


def test_list_models_says_each_family(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        models = {m.name: m for m in client.models()}
    assert models["tiny-sd"].family == "sd15" and models["tiny-sdxl"].family == "sdxl"
    assert models["tiny-sdxl-inpainting"].kind == "inpainting"
    assert "controlnet" in models["tiny-sdxl"].addons


def test_sdxl_template_edit_runs_exact(fleet: Any, tiny_models: Path) -> None:
    """An SDXL template edit is the SDXL inpainting it stands for; the activation cache serves
    SD1.5-shaped UNets only, so with it on the edit runs exact and records nothing."""
    import io

    out = io.BytesIO()
    INIT.save(out, format="PNG")
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        template = client.register_template("tiny-sdxl-inpainting", out.getvalue(),
                                            prompt="a sofa", seed=9, steps=8, warm_up=True)
        result = client.generate("a cat on a sofa", template_id=template.template_id, mask=MASK,
                                 return_pixels=True, seed=0,
                                 approximations=dfleet.Approximations(activation_cache=True))
    expected = reference_images(tiny_models, prompt="a cat on a sofa", seed=9, steps=8,
                                image=INIT, mask=MASK, model="tiny-sdxl-inpainting")[0]
    assert result.metadata["edit_mode"] == "exact" and template.cache_bytes == 0
    assert result.pixels is not None
    assert np.abs(result.pixels - expected).max() <= TOLERANCE


def test_sdxl_lora_under_bal_joins_by_its_bound(fleet: Any) -> None:
    result = generate(fleet.gateway_address, dict(prompt="a portrait", seed=34,
                                                  loras=[("tiny-sdxl-lora", 1.0)]),
                      approximations=dfleet.Approximations(lora_async_steps=3))
    assert 0 <= int(result.metadata["lora_joined_step"]) <= 3
