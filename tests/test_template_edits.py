"""Masked edits of registered templates through the whole fleet (tiny inpainting model).

* With the activation cache off, an edit of a template equals the plain
  diffusers inpainting pipeline on the template's image, the edit's mask and
  prompt and the template's seed (<= 1e-5).
* With it on, the first edit runs exact while the template's recording runs
  alongside (the result reports the record's size); the next edit is served
  from the cache and stays close to the exact edit (PSNR).
* Registering with warm_up records at once: the first edit is already cached.
* Bad template requests get the right status code and name the field.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import dfleet
from diffusion.v1 import gateway_pb2, gateway_pb2_grpc
from tests.diffusers_reference import reference, sample_image, sample_mask

TOLERANCE = 1e-5
TEMPLATE = sample_image(8)
MASK = sample_mask()
MODEL = "tiny-sd-inpainting"


def png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def register(address: str, warm_up: bool, seed: int = 5, prompt: str = "a sofa in a room"
             ) -> gateway_pb2.RegisterTemplateResponse:
    with grpc.insecure_channel(address) as channel:
        return gateway_pb2_grpc.GatewayStub(channel).RegisterTemplate(
            gateway_pb2.RegisterTemplateRequest(
                model=MODEL, image=gateway_pb2.ImageInput(data=png(TEMPLATE)), prompt=prompt,
                warm_up=warm_up, seed=seed, num_inference_steps=12), timeout=120)


def edit(address: str, template_id: str, cache: bool, prompt: str = "a cat on a sofa",
         **extra: Any) -> tuple[np.ndarray, dict[str, str]]:
    with dfleet.Client(address, timeout=120) as client:
        result = client.generate(
            prompt, template_id=template_id, mask=MASK, seed=0, return_pixels=True,
            approximations=dfleet.Approximations(activation_cache=cache), **extra)
    assert result.pixels is not None
    return result.pixels, result.metadata


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


def test_edit_without_cache_equals_diffusers_inpainting(fleet: Any, tiny_models: Path) -> None:
    template_id = register(fleet.gateway_address, warm_up=False).template_id
    pixels, metadata = edit(fleet.gateway_address, template_id, cache=False)
    expected = reference(tiny_models, prompt="a cat on a sofa", seed=5, steps=12,
                         image=TEMPLATE, mask=MASK, model=MODEL)
    assert metadata["edit_mode"] == "exact" and metadata["template_id"] == template_id
    assert np.abs(pixels - expected).max() <= TOLERANCE, metadata


def test_first_cached_edit_records_then_edits_hit_the_cache(fleet: Any) -> None:
    template_id = register(fleet.gateway_address, warm_up=False).template_id
    exact, _ = edit(fleet.gateway_address, template_id, cache=False)
    first, meta_first = edit(fleet.gateway_address, template_id, cache=True)
    assert meta_first["edit_mode"] == "exact" and int(meta_first["cache_bytes"]) > 0
    assert np.abs(first - exact).max() <= TOLERANCE  # shared its batch with the recording
    cached, meta = edit(fleet.gateway_address, template_id, cache=True)
    assert meta["edit_mode"] == "cached", meta
    assert int(meta["cache_bytes"]) == int(meta_first["cache_bytes"])
    assert 0.0 < float(meta["edit_region_ratio"]) < 1.0
    assert psnr(cached, exact) > 25.0
    assert np.abs(cached - exact).max() > 0  # the unmasked tokens came from the template run


def test_warm_up_records_at_registration(fleet: Any) -> None:
    response = register(fleet.gateway_address, warm_up=True, seed=9)
    assert response.cache_bytes > 0
    _, metadata = edit(fleet.gateway_address, response.template_id, cache=True,
                       prompt="a dog on a sofa")
    assert metadata["edit_mode"] == "cached"


@pytest.mark.parametrize("case, code, field", [
    ("unknown", grpc.StatusCode.NOT_FOUND, "template_id"),
    ("with_image", grpc.StatusCode.INVALID_ARGUMENT, "image"),
    ("no_mask", grpc.StatusCode.INVALID_ARGUMENT, "mask"),
    ("cache_without_template", grpc.StatusCode.INVALID_ARGUMENT,
     "approximations.activation_cache"),
])
def test_bad_edit_requests_name_the_field(fleet: Any, case: str, code: grpc.StatusCode,
                                          field: str) -> None:
    template_id = "tpl-unknown" if case == "unknown" else register(
        fleet.gateway_address, warm_up=False).template_id
    params: dict[str, Any] = dict(template_id=template_id, mask=MASK, seed=0)
    if case == "with_image":
        params["image"] = TEMPLATE
    if case == "no_mask":
        del params["mask"]
    if case == "cache_without_template":
        params = dict(model=MODEL, image=TEMPLATE, mask=MASK,
                      approximations=dfleet.Approximations(activation_cache=True))
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.FleetError) as caught:
            client.generate("a cat", **params)
    assert caught.value.code == code and caught.value.field == field


def test_registering_on_a_base_model_is_refused(fleet: Any) -> None:
    with grpc.insecure_channel(fleet.gateway_address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            gateway_pb2_grpc.GatewayStub(channel).RegisterTemplate(
                gateway_pb2.RegisterTemplateRequest(
                    model="tiny-sd", image=gateway_pb2.ImageInput(data=png(TEMPLATE))),
                timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model" in (caught.value.details() or "")


def test_cli_registers_a_template_with_its_recipe(fleet: Any, tiny_models: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`dfleet register-template` passes seed, steps and guidance: an edit naming none of
    them computes what diffusers computes with that recipe."""
    from dfleet.cli import main

    image = tmp_path / "template.png"
    TEMPLATE.save(image)
    assert main(["register-template", MODEL, str(image), "--prompt", "a sofa in a room",
                 "--seed", "7", "--steps", "6", "--guidance-scale", "5.0",
                 "--gateway", fleet.gateway_address]) == 0
    template_id = json.loads(capsys.readouterr().out)["template_id"]
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        result = client.generate("a cat on a sofa", template_id=template_id, mask=MASK,
                                 return_pixels=True)
    expected = reference(tiny_models, prompt="a cat on a sofa", seed=7, steps=6,
                         guidance_scale=5.0, image=TEMPLATE, mask=MASK, model=MODEL)
    assert result.pixels is not None
    assert np.abs(result.pixels - expected).max() <= TOLERANCE, result.metadata
