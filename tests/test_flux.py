"""The Flux family through the fleet: each workflow equals diffusers' own Flux pipeline on the
same folder and seed (max |difference| <= 1e-5 on the float image), every service its own
process and every tensor by shared memory.

Flux-dev (guidance embedded) and Flux-schnell (none) text-to-image, a non-square size,
image-to-image (the Flux pipelines' own strength arithmetic), inpainting on the base model
(the re-noised image pasted back outside the mask each step), a Flux ControlNet (its control
image VAE-encoded and sampled before the initial noise, joint and single block residuals
through the step ring), a diffusers/peft LoRA of the transformer, a Flux-format LoRA (the
original model's fused layer names) with transformer and CLIP layers (<= 1e-4 after the
in-place merge, as every LoRA file test), two images per request, previews, the
Karras-sigma flow-match scheduler, a built-in workflow named with its inputs (the family's
defaults). Bad combinations (an SD ControlNet, a Flux LoRA on SDXL, an SD1.5 or SDXL LoRA on
Flux, a size off the 16-pixel grid, a negative prompt, an SD scheduler, an IP-Adapter) are
refused before any compute, naming the field; ListModels says what a Flux model takes; a
request naming no model still gets the SD1.5 one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from tests.diffusers_reference import sample_image, sample_mask
from tests.flux_reference import flux_reference_images

TOLERANCE = 1e-5
LORA_FILE_TOLERANCE = 1e-4   # a LoRA file merged in place, as tests/test_lora_fleet.py
SIZE = 32
CONTROL, INIT, MASK = sample_image(1, SIZE), sample_image(3, SIZE), sample_mask(SIZE)

FLUX: dict[str, dict[str, Any]] = {
    "dev": dict(prompt="a red fox in snow", seed=11),
    "schnell": dict(prompt="a red fox in snow", seed=12, model="tiny-flux-schnell"),
    "non_square": dict(prompt="a lighthouse", seed=13, width=48, height=32,
                       guidance_scale=5.0),
    "img2img": dict(prompt="a bridge", seed=41, image=INIT, strength=0.6),
    "inpaint": dict(prompt="a cat", seed=51, image=INIT, mask=MASK, strength=0.8),
    "controlnet": dict(prompt="a house", seed=21,
                       controlnets=[("tiny-flux-cn", CONTROL, 0.8)]),
    "lora": dict(prompt="a portrait", seed=31, loras=[("tiny-flux-lora", 0.9)]),
    "lora_kohya": dict(prompt="a portrait", seed=32, loras=[("tiny-flux-lora-kohya", 0.8)]),
    "two_loras": dict(prompt="a portrait", seed=34,
                      loras=[("tiny-flux-lora", 0.9), ("tiny-flux-lora-kohya", 0.5)]),
    "two_images": dict(prompt="a boat", seed=61, num_images=2),
    "karras": dict(prompt="a boat", seed=62, scheduler="flow_match_euler_karras"),
}


def generate(address: str, spec: dict[str, Any], **extra: Any) -> dfleet.Result:
    kwargs = {"model": "tiny-flux-dev", "width": SIZE, "height": SIZE, "steps": 4, **spec}
    kwargs["controlnets"] = [dfleet.ControlNet(n, image=img, scale=s)
                             for n, img, s in kwargs.pop("controlnets", [])]
    kwargs["loras"] = [dfleet.Lora(n, scale=s) for n, s in kwargs.pop("loras", [])]
    with dfleet.Client(address, timeout=180) as client:
        return client.generate(return_pixels=True, **kwargs, **extra)


def pixels_of(result: dfleet.Result) -> np.ndarray:
    return np.stack([image.pixels for image in result.images])


@pytest.mark.parametrize("name", sorted(FLUX))
def test_flux_equals_diffusers(fleet: Any, tiny_models: Path, name: str) -> None:
    spec = FLUX[name]
    result = generate(fleet.gateway_address, spec)
    expected = flux_reference_images(tiny_models, steps=4, **{"width": SIZE, "height": SIZE,
                                                              **spec})
    ours = pixels_of(result)
    assert ours.shape == expected.shape
    tolerance = LORA_FILE_TOLERANCE if name in ("lora_kohya", "two_loras") else TOLERANCE
    assert np.abs(ours - expected).max() <= tolerance, result.metadata


def test_a_flux_builtin_by_name_takes_the_family_defaults(fleet: Any, tiny_models: Path) -> None:
    """The inpainting request kind on the base model, named as a workflow with its inputs and no
    strength or guidance: Flux's defaults (0.6, 3.5), as FluxInpaintPipeline's."""
    with dfleet.Client(fleet.gateway_address, timeout=180) as client:
        result = client.generate(workflow="inpaint.tiny-flux-dev", return_pixels=True, inputs={
            "prompt": "a cat", "image": INIT, "mask": MASK, "seed": 52, "steps": 4,
            "width": SIZE, "height": SIZE})
    expected = flux_reference_images(tiny_models, prompt="a cat", seed=52, steps=4,
                                     image=INIT, mask=MASK)
    assert np.abs(pixels_of(result) - expected).max() <= TOLERANCE, result.metadata


def test_a_flux_bal_request_joins_within_its_bound(fleet: Any) -> None:
    """BAL is the denoiser's step-boundary merge: a Flux request takes it like any other."""
    with dfleet.Client(fleet.gateway_address, timeout=180) as client:
        result = client.generate("a portrait", model="tiny-flux-dev", seed=33, steps=4,
                                 width=SIZE, height=SIZE, loras=[dfleet.Lora("tiny-flux-lora")],
                                 approximations=dfleet.Approximations(lora_async_steps=2))
    assert 0 <= int(result.metadata["lora_joined_step"]) <= 2


def test_a_negative_prompt_given_to_a_flux_workflow_is_refused(fleet: Any) -> None:
    """Flux runs no unconditional rows: the text is refused, not dropped."""
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.InvalidArgument) as failure:
            client.generate(workflow="txt2img.tiny-flux-dev", inputs={
                "prompt": "a cat", "negative_prompt": "fog", "seed": 1, "steps": 2,
                "width": SIZE, "height": SIZE})
    assert failure.value.field == "inputs.negative_prompt", failure.value


def test_flux_previews_are_unpacked_latents(fleet: Any) -> None:
    """A preview of a Flux request decodes like any other (the VAE gets [n, C, h, w])."""
    with dfleet.Client(fleet.gateway_address, timeout=180) as client:
        events = list(client.stream("a kite", model="tiny-flux-dev", width=SIZE, height=SIZE,
                                    steps=3, seed=5, preview=True))
    previews = [e for e in events if isinstance(e, dfleet.Progress) and e.preview is not None]
    assert previews and all(p.preview.size == (SIZE, SIZE) for p in previews)
    assert isinstance(events[-1], dfleet.Result)


@pytest.mark.parametrize("field, kwargs", [
    ("controlnets[0].name", dict(controlnets=[dfleet.ControlNet("tiny-cn-a", CONTROL)])),
    ("width", dict(width=40)),
    ("negative_prompt", dict(negative_prompt="fog")),
    ("scheduler", dict(scheduler="euler")),
    ("ip_adapters", dict(ip_adapters=[dfleet.IpAdapter("tiny-ip-adapter", CONTROL)])),
    ("loras[0].name", dict(loras=[dfleet.Lora("tiny-lora-r4")])),
    ("loras[0].name", dict(loras=[dfleet.Lora("tiny-sdxl-lora")])),
    ("loras[1].name", dict(loras=[dfleet.Lora("tiny-flux-lora"),
                                  dfleet.Lora("tiny-sdxl-lora-kohya")])),
])
def test_bad_flux_combinations_are_refused_naming_the_field(fleet: Any, field: str,
                                                            kwargs: dict[str, Any]) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.InvalidArgument) as failure:
            client.generate("a cat", **{"model": "tiny-flux-dev", "seed": 1, "steps": 2,
                                        "width": SIZE, "height": SIZE, **kwargs})
        assert failure.value.field == field, failure.value


@pytest.mark.parametrize("model, field, kwargs", [
    ("tiny-sdxl", "loras[0].name", dict(loras=[dfleet.Lora("tiny-flux-lora")])),
    ("tiny-sdxl", "loras[0].name", dict(loras=[dfleet.Lora("tiny-flux-lora-kohya")])),
    ("tiny-sdxl", "controlnets[0].name",
     dict(controlnets=[dfleet.ControlNet("tiny-flux-cn", CONTROL)])),
    ("tiny-sd", "scheduler", dict(scheduler="flow_match_euler")),
])
def test_flux_add_ons_are_refused_on_other_families(fleet: Any, model: str, field: str,
                                                    kwargs: dict[str, Any]) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.InvalidArgument) as failure:
            client.generate("a cat", model=model, seed=1, steps=2, **kwargs)
        assert failure.value.field == field, failure.value


def test_a_request_naming_no_model_gets_the_oldest_family(fleet: Any) -> None:
    """Flux folders sort before tiny-sd by name; the default stays SD1.5's first model."""
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        result = client.generate("a cat", seed=1, steps=2)
    assert result.metadata["model"] == "tiny-sd"


def test_list_models_says_what_flux_takes(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        models = {m.name: m for m in client.models()}
    dev, schnell = models["tiny-flux-dev"], models["tiny-flux-schnell"]
    assert dev.family == schnell.family == "flux" and dev.kind == "base"
    assert set(dev.addons) == {"lora", "controlnet", "preview"}
    assert dev.schedulers == ("default", "flow_match_euler", "flow_match_euler_karras")
    assert dev.default_scheduler == "FlowMatchEulerDiscreteScheduler"
    assert dev.default_width == dev.default_height == 1024
    assert models["tiny-flux-cn"].kind == "controlnet"
