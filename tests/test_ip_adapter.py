"""IP-Adapters (image prompts) through the fleet, against diffusers' own IP-Adapter loading.

Every service is its own process and every tensor goes by shared memory. The reference is the
plain pipeline with ``load_ip_adapter`` (the published file layout, the adapter's image
encoder) and ``set_ip_adapter_scale`` on the same folders. Covers one adapter with and without
classifier-free guidance, two adapters at once, an adapter with a ControlNet and a LoRA in the
same request, several images per request, two requests with the same adapter at different
scales sharing one denoiser batch (each exact), and bad inputs (an image that is not one, a
scale outside [0, 2], an unknown adapter) refused with the field named while the fleet goes on
serving. The CFG-partner case is in test_cfg_parallel.py, whose fleet has two denoisers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from tests.diffusers_reference import reference_images, sample_image
from tests.fleet_specs import sdk_kwargs

TOLERANCE = 1e-5
FACE, STYLE, EDGES = sample_image(5), sample_image(6), sample_image(1)

CASES: dict[str, dict[str, Any]] = {
    "alone": dict(prompt="a cat", seed=3, ip_adapters=[("tiny-ip-adapter", FACE, 0.8)]),
    "no_cfg": dict(prompt="a cat", seed=4, guidance_scale=1.0,
                   ip_adapters=[("tiny-ip-adapter", FACE, 1.0)]),
    "two_adapters": dict(prompt="a cat", seed=5, ip_adapters=[("tiny-ip-adapter", FACE, 0.6),
                                                              ("tiny-ip-adapter-b", STYLE, 1.5)]),
    "controlnet_lora": dict(prompt="a house", seed=6, ip_adapters=[("tiny-ip-adapter", FACE, 0.7)],
                            controlnets=[("tiny-cn-a", EDGES, 0.9)],
                            loras=[("tiny-lora-r4", 0.8)]),
    "three_images": dict(prompt="a cat", seed=7, num_images=3,
                         ip_adapters=[("tiny-ip-adapter", FACE, 0.5)]),
}


def generate(address: str, spec: dict[str, Any]) -> dfleet.Result:
    kwargs = sdk_kwargs(spec)
    with dfleet.Client(address, timeout=120) as client:
        return client.generate(return_pixels=True, steps=spec.get("steps", 10), **{
            k: v for k, v in kwargs.items() if k != "steps"})


@pytest.mark.parametrize("name", sorted(CASES))
def test_ip_adapter_equals_diffusers(fleet: Any, tiny_models: Path, name: str) -> None:
    spec = CASES[name]
    result = generate(fleet.gateway_address, spec)
    expected = reference_images(tiny_models, steps=10, **spec)
    assert len(result.images) == len(expected)
    for image, want in zip(result.images, expected, strict=True):
        assert image.pixels is not None
        assert np.abs(image.pixels - want).max() <= TOLERANCE, result.metadata
    assert "ip_adapter" in result.metadata["workflow"]


def test_the_adapter_changes_the_image(fleet: Any, tiny_models: Path) -> None:
    with_image = generate(fleet.gateway_address, CASES["alone"])
    plain = reference_images(tiny_models, prompt="a cat", seed=3, steps=10)[0]
    assert with_image.pixels is not None
    assert np.abs(with_image.pixels - plain).max() > 1e-2


def test_same_adapter_at_other_scales_shares_a_batch(fleet: Any, tiny_models: Path) -> None:
    specs = [dict(prompt="a dog", seed=8, steps=40, ip_adapters=[("tiny-ip-adapter", FACE, s)])
             for s in (0.3, 1.2)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: generate(fleet.gateway_address, s), specs))
    assert max(int(r.metadata["denoise_batch_peak"]) for r in results) >= 2
    for spec, result in zip(specs, results, strict=True):
        assert result.pixels is not None
        assert np.abs(result.pixels - reference_images(tiny_models, **spec)[0]).max() \
            <= TOLERANCE


@pytest.mark.parametrize("field, adapter, error", [
    ("ip_adapters[0].image", dfleet.IpAdapter("tiny-ip-adapter", b"not an image"),
     dfleet.InvalidArgument),
    ("ip_adapters[0].scale", dfleet.IpAdapter("tiny-ip-adapter", FACE, 2.5),
     dfleet.InvalidArgument),
    ("ip_adapters[0].name", dfleet.IpAdapter("no-such-adapter", FACE), dfleet.NotFound),
])
def test_bad_ip_adapter_inputs_name_their_field(fleet: Any, field: str,
                                                adapter: dfleet.IpAdapter,
                                                error: type[Exception]) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(error) as failure:
            client.generate("a cat", seed=1, steps=2, ip_adapters=[adapter])
        assert failure.value.field == field  # type: ignore[attr-defined]
        client.generate("a cat", seed=1, steps=2)


def test_list_models_shows_the_adapters(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        kinds = {m.name: m.kind for m in client.models()}
    assert kinds["tiny-ip-adapter"] == kinds["tiny-ip-adapter-b"] == "ip_adapter"
