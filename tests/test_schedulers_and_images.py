"""Schedulers chosen per request and several images per request, through the fleet.

Each scheduler name (and the model's own) equals diffusers' pipeline with the same scheduler
class and config (<= 1e-5; the ancestral and SDE ones with the same generators); ``num_images``
1 and 3 give diffusers' images for a list of generators seeded seed, seed + 1, ...; an unknown
scheduler, a count outside 1..8 and a mask of another size than its image are
INVALID_ARGUMENT naming the field, and ListModels lists
the schedulers. Every service is its own process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from services.common import schedulers
from tests.diffusers_reference import SCHEDULERS, reference_images, sample_image, sample_mask

TOLERANCE = 1e-5


def _generate(address: str, **kwargs: Any) -> dfleet.Result:
    with dfleet.Client(address, timeout=120) as client:
        return client.generate(return_pixels=True, **kwargs)


def test_every_scheduler_name_is_tested_and_known_to_the_sdk() -> None:
    assert set(SCHEDULERS) | {"default"} == set(schedulers.NOISE_PREDICTION)
    assert dfleet.SCHEDULERS == schedulers.NAMES


@pytest.mark.parametrize("name", ["default", *SCHEDULERS])
def test_scheduler_equals_diffusers(fleet: Any, tiny_models: Path, name: str) -> None:
    spec = dict(prompt="a lighthouse at dusk", seed=71, steps=8)
    result = _generate(fleet.gateway_address, scheduler=name, **spec)
    expected = reference_images(tiny_models, scheduler=name, **spec)[0]
    assert result.pixels is not None
    assert np.abs(result.pixels - expected).max() <= TOLERANCE, result.metadata
    assert result.metadata["scheduler"] == name


@pytest.mark.parametrize("count", [1, 3])
def test_num_images_equal_diffusers_with_a_list_of_generators(fleet: Any, tiny_models: Path,
                                                               count: int) -> None:
    spec = dict(prompt="a red boat", seed=81, steps=8, scheduler="euler_a")
    result = _generate(fleet.gateway_address, num_images=count, **spec)
    expected = reference_images(tiny_models, num_images=count, **spec)
    assert [image.seed for image in result.images] == [81 + i for i in range(count)]
    for image, want in zip(result.images, expected, strict=True):
        assert image.pixels is not None
        assert np.abs(image.pixels - want).max() <= TOLERANCE
    assert result.pixels is not None and np.array_equal(result.pixels, result.images[0].pixels)


@pytest.mark.parametrize("inputs", [
    dict(image=sample_image(3), strength=0.7),
    dict(image=sample_image(3), mask=sample_mask(), strength=0.8, model="tiny-sd-inpainting"),
], ids=["img2img", "inpaint"])
def test_num_images_with_an_input_image(fleet: Any, tiny_models: Path,
                                        inputs: dict[str, Any]) -> None:
    spec = dict(prompt="a bridge", seed=91, steps=8, **inputs)
    result = _generate(fleet.gateway_address, num_images=2, **spec)
    expected = reference_images(tiny_models, num_images=2, **spec)
    for image, want in zip(result.images, expected, strict=True):
        assert image.pixels is not None
        assert np.abs(image.pixels - want).max() <= TOLERANCE


@pytest.mark.parametrize("field, kwargs", [
    ("scheduler", dict(scheduler="euler_karras_turbo")),
    ("num_images", dict(num_images=9)),
    ("num_images", dict(num_images=0)),
    ("mask", dict(image=sample_image(3), mask=sample_mask(32), model="tiny-sd-inpainting")),
])
def test_bad_choices_name_their_field(fleet: Any, field: str, kwargs: dict[str, Any]) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.InvalidArgument) as failure:
            client.generate("a cat", seed=1, steps=2, **kwargs)
        assert failure.value.field == field
        if field == "scheduler":
            assert "dpmpp_2m_karras" in str(failure.value)   # the valid names are listed
        if field == "mask":
            assert "mask is 32x32 but the image is 64x64" in str(failure.value)
        client.generate("a cat", seed=1, steps=2)            # the fleet still serves


def test_list_models_names_the_schedulers(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        models = {m.name: m for m in client.models()}
    assert set(models["tiny-sd"].schedulers) == set(schedulers.NOISE_PREDICTION)
    assert models["tiny-sd"].default_scheduler == "PNDMScheduler"
    assert models["tiny-cn-a"].schedulers == ()


def test_cli_writes_every_image(fleet: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "boat.png"
    done = subprocess.run(
        [sys.executable, "-m", "dfleet", "generate", "a boat", "--gateway",
         fleet.gateway_address, "--steps", "2", "--seed", "5", "--scheduler", "ddim",
         "--num-images", "2", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "boat-0.png").is_file() and (tmp_path / "boat-1.png").is_file()
    help_text = subprocess.run([sys.executable, "-m", "dfleet", "generate", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert "dpmpp_2m_karras" in help_text
