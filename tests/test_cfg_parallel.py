"""CFG parallelism and ControlNets on several replicas, through a fleet with two denoiser and two
ControlNet replicas (every service its own process, tensors by shared memory).

Covers: with ``cfg_parallel`` the request's unconditional pass runs on the second denoiser
(reported in the metadata) and the image equals the one-replica image and the plain diffusers
pipeline (<= 1e-5) for text-to-image, ControlNet + LoRA (the partner runs its own ControlNet
stream and merges the LoRA too), image-to-image, inpainting, SDXL with a ControlNet and a
LoRA (the partner gets the rows' pooled embeddings and time ids), and an IP-Adapter with a
ControlNet (the partner builds both for its rows, zero image embeddings being the
unconditional ones); two CFG-parallel requests
started at once in opposite directions (each replica the other's partner) both finish exact;
without guidance the switch is a no-op; the two ControlNets of one request run on the two
ControlNet replicas, each of which then holds one of them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import dfleet
from services.common.fleet_state import FleetState
from tests.diffusers_reference import reference, sample_image, sample_mask
from tests.fleet_specs import sdk_kwargs

TOLERANCE = 1e-5
CN_A, CN_B, INIT, MASK = sample_image(1), sample_image(2), sample_image(3), sample_mask()
CFG = dfleet.Approximations(cfg_parallel=True)

CASES: dict[str, dict[str, Any]] = {
    "txt2img": dict(prompt="a red fox in snow", seed=11, steps=10),
    "controlnet_lora": dict(prompt="a house", seed=21, steps=10,
                            controlnets=[("tiny-cn-a", CN_A, 0.9)], loras=[("tiny-lora-r4", 0.8)]),
    "img2img": dict(prompt="a painting of a bridge", seed=41, steps=10, image=INIT,
                    strength=0.7),
    "inpaint": dict(prompt="a cat on a sofa", seed=51, steps=10, image=INIT, mask=MASK,
                    model="tiny-sd-inpainting"),
    "ip_adapter_controlnet": dict(prompt="a house", seed=23, steps=10,
                                  ip_adapters=[("tiny-ip-adapter", CN_B, 0.9)],
                                  controlnets=[("tiny-cn-a", CN_A, 0.9)]),
}


@pytest.fixture(scope="module")
def wide_fleet(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from dfleet.local_fleet import LocalFleet

    local = LocalFleet(str(tiny_models), state_dir=str(tmp_path_factory.mktemp("wide")),
                       replicas={"denoiser": 2, "controlnet": 2},
                       env={"DFLEET_INLINE_MAX_BYTES": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    with local:
        yield local


def _generate(address: str, spec: dict[str, Any],
              approximations: dfleet.Approximations | None = None
              ) -> tuple[np.ndarray, dict[str, str]]:
    kwargs = sdk_kwargs(spec)
    with dfleet.Client(address, timeout=120) as client:
        result = client.generate(return_pixels=True, approximations=approximations, **kwargs)
    assert result.pixels is not None
    return result.pixels, result.metadata


@pytest.mark.parametrize("name", sorted(CASES))
def test_cfg_parallel_equals_one_replica_and_diffusers(wide_fleet: Any, tiny_models: Path,
                                                       name: str) -> None:
    spec = CASES[name]
    split, metadata = _generate(wide_fleet.gateway_address, spec, CFG)
    assert metadata["cfg_partner"] not in ("", metadata["denoiser"]), metadata
    single, single_meta = _generate(wide_fleet.gateway_address, spec)
    assert "cfg_partner" not in single_meta
    assert np.abs(split - single).max() <= TOLERANCE
    assert np.abs(split - reference(tiny_models, **spec)).max() <= TOLERANCE


def test_two_requests_partnering_each_other_both_finish(wide_fleet: Any,
                                                        tiny_models: Path) -> None:
    specs = [dict(prompt="a ship", seed=61, steps=20), dict(prompt="a ship", seed=62, steps=20)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: _generate(wide_fleet.gateway_address, s, CFG), specs))
    for spec, (pixels, metadata) in zip(specs, results, strict=True):
        assert metadata["cfg_partner"] != metadata["denoiser"]
        assert np.abs(pixels - reference(tiny_models, **spec)).max() <= TOLERANCE


def test_without_guidance_cfg_parallel_is_a_no_op(wide_fleet: Any, tiny_models: Path) -> None:
    spec = dict(prompt="a lighthouse", seed=13, steps=10, guidance_scale=1.0)
    pixels, metadata = _generate(wide_fleet.gateway_address, spec, CFG)
    assert "cfg_partner" not in metadata
    assert np.abs(pixels - reference(tiny_models, **spec)).max() <= TOLERANCE


def test_two_controlnets_run_on_two_replicas(wide_fleet: Any, tiny_models: Path) -> None:
    spec = dict(prompt="a house", seed=22, steps=10,
                controlnets=[("tiny-cn-a", CN_A, 0.7), ("tiny-cn-b", CN_B, 1.2)])
    pixels, _ = _generate(wide_fleet.gateway_address, spec)
    assert np.abs(pixels - reference(tiny_models, **spec)).max() <= TOLERANCE
    fleet_state = FleetState.from_url(wide_fleet.redis_url)
    deadline = time.monotonic() + 30  # resident models travel with the next heartbeat
    while True:
        held = sorted(tuple(r.models) for r in fleet_state.replicas("controlnet"))
        if all(held) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(held) == 2 and sorted(m for models in held for m in models) == \
        ["tiny-cn-a", "tiny-cn-b"], held


def test_sdxl_cfg_parallel_with_controlnet_and_lora(wide_fleet: Any, tiny_models: Path) -> None:
    """Last in the module: it makes a ControlNet replica hold an SDXL ControlNet too."""
    spec = dict(prompt="a house", seed=24, steps=8, model="tiny-sdxl",
                controlnets=[("tiny-sdxl-cn", CN_A, 0.9)], loras=[("tiny-sdxl-lora", 0.8)])
    split, metadata = _generate(wide_fleet.gateway_address, spec, CFG)
    assert metadata["cfg_partner"] not in ("", metadata["denoiser"]), metadata
    assert np.abs(split - reference(tiny_models, **spec)).max() <= TOLERANCE
