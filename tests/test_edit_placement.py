"""Mask-aware placement of template edits, against a real Redis; template request expansion.

* The edit cost model recovers a linear step-time law from a profile and
  refits on observations; exact edits cost their measured median.
* The work ledger books, updates and removes an edit's predicted work per
  replica; mask-aware placement picks the replica with the least of it (a
  replica without the model pays its load), round-robin alternates,
  least-requests follows the heartbeat load.
* The region ratio of a mask counts latent tokens dilated by the halo.
* An edit request is expanded onto its template's image, model and recipe;
  the request's own seed, steps and guidance win when given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from diffusion.v1 import gateway_pb2
from services.common.errors import InvalidArgument
from services.common.fleet_state import FleetState, ReplicaInfo
from services.gateway.attachments.template_edit import region_ratio
from services.gateway.edit_placement import (
    LEAST_REQUESTS,
    MASK_AWARE,
    ROUND_ROBIN,
    EditCostModel,
    EditDemand,
    EditPlacer,
)
from services.gateway.templates import Template, expand


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetState]:
    from dfleet.local_fleet import start_redis

    proc, url = start_redis(tmp_path / "redis.log")
    try:
        yield FleetState.from_url(url, prefix="test:")
    finally:
        proc.terminate()
        proc.wait(10)


def replica(name: str, load: int = 0, models: tuple[str, ...] = ("m",)) -> ReplicaInfo:
    return ReplicaInfo(name, "denoiser", f"addr-{name}", "host", models=models, load=load)


def test_cost_model_fits_a_profile_and_refits(tmp_path: Path) -> None:
    law = lambda ratio: 12.0 + 300.0 * ratio  # noqa: E731 - ms per step
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"cached": [[r, 2.0, law(r)] for r in (0.1, 0.3, 0.6, 0.9)],
                                   "exact_ms": [310.0, 290.0, 300.0]}))
    model = EditCostModel.from_profile(profile)
    small = EditDemand(0.05, True, 20, 2e6)
    assert model.per_step_ms(small) == pytest.approx(law(0.05), rel=0.05)
    assert model.cost_ms(small) == pytest.approx(20 * law(0.05), rel=0.05)
    assert model.per_step_ms(EditDemand(0.5, False, 20, 0)) == 300.0
    for _ in range(50):  # the machine got twice as slow
        for r in (0.1, 0.5, 0.9):
            model.observe(EditDemand(r, True, 20, 2e6), 2 * law(r))
    assert model.per_step_ms(EditDemand(0.3, True, 20, 2e6)) == pytest.approx(2 * law(0.3),
                                                                              rel=0.1)


def test_mask_aware_picks_least_predicted_work(fleet: FleetState) -> None:
    placer = EditPlacer(fleet, EditCostModel(), MASK_AWARE)
    a, b = replica("a"), replica("b")
    first = placer.reserve([a, b], "m", "r1", 5000.0)   # a large edit
    second = placer.reserve([a, b], "m", "r2", 400.0)   # goes to the other replica
    third = placer.reserve([a, b], "m", "r3", 400.0)    # still less work there
    assert second.replica_id != first.replica_id and third.replica_id == second.replica_id
    work = placer.ledger.outstanding([a, b])
    assert work[first.replica_id] == (5000.0, 1) and work[second.replica_id] == (800.0, 2)
    placer.ledger.set(first.replica_id, "r1", 100.0)    # nearly done
    assert placer.choose([a, b], "m").replica_id == first.replica_id
    placer.ledger.remove(first.replica_id, "r1")
    assert placer.ledger.outstanding([a, b])[first.replica_id] == (0.0, 0)


def test_a_replica_without_the_model_pays_its_load(fleet: FleetState) -> None:
    placer = EditPlacer(fleet, EditCostModel(), MASK_AWARE, model_load_ms=3000.0)
    warm, cold = replica("warm"), replica("cold", models=())
    placer.ledger.set("warm", "busy", 2000.0)
    assert placer.choose([warm, cold], "m").replica_id == "warm"
    placer.ledger.set("warm", "busy", 4000.0)
    assert placer.choose([warm, cold], "m").replica_id == "cold"


def test_round_robin_and_least_requests(fleet: FleetState) -> None:
    rr = EditPlacer(fleet, EditCostModel(), ROUND_ROBIN)
    picks = [rr.reserve([replica("a"), replica("b")], "m", f"r{i}", 1.0).replica_id
             for i in range(4)]
    assert picks == ["a", "b", "a", "b"]
    lr = EditPlacer(fleet, EditCostModel(), LEAST_REQUESTS)
    assert lr.choose([replica("a", load=3), replica("b", load=1)], "m").replica_id == "b"
    with pytest.raises(ValueError):
        EditPlacer(fleet, EditCostModel(), "random")


def test_region_ratio_counts_dilated_latent_tokens() -> None:
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 24:32, 24:32] = 1.0                      # one latent token of 64
    assert region_ratio(mask, 8, 0) == pytest.approx(1 / 64)
    assert region_ratio(mask, 8, 1) == pytest.approx(9 / 64)
    mask[..., 30:34, :] = 1.0                          # straddles two token rows
    assert region_ratio(mask, 8, 0) == pytest.approx(16 / 64)


def template(**kw: object) -> Template:
    base: dict[str, object] = dict(
        template_id="tpl-1", model="inp", width=64, height=64, seed=5, steps=12,
        guidance_scale=6.0, prompt="p", image_png=b"png",
        conditioning={"prompt_embeds": torch.zeros(1)}, negative_conditioning=None,
        image_moments=torch.zeros(1))
    return Template(**{**base, **kw})  # type: ignore[arg-type]


def test_expand_uses_the_template_recipe_unless_the_edit_names_its_own() -> None:
    mask = gateway_pb2.ImageInput(data=b"mask")
    plain = expand(gateway_pb2.GenerateRequest(template_id="tpl-1", prompt="x", mask=mask),
                   template())
    assert (plain.model, plain.image.data, plain.seed, plain.num_inference_steps) == (
        "inp", b"png", 5, 12)
    assert plain.has_guidance_scale and plain.guidance_scale == 6.0
    own = expand(gateway_pb2.GenerateRequest(template_id="tpl-1", prompt="x", mask=mask, seed=9,
                                             num_inference_steps=30, guidance_scale=2.0,
                                             has_guidance_scale=True), template())
    assert (own.seed, own.num_inference_steps, own.guidance_scale) == (9, 30, 2.0)
    with_image = gateway_pb2.GenerateRequest(template_id="tpl-1", prompt="x", mask=mask,
                                             image=gateway_pb2.ImageInput(data=b"i"))
    other_model = gateway_pb2.GenerateRequest(template_id="tpl-1", prompt="x", mask=mask,
                                              model="other")
    no_mask = gateway_pb2.GenerateRequest(template_id="tpl-1", prompt="x")
    for request, field in ((with_image, "image"), (other_model, "model"), (no_mask, "mask")):
        with pytest.raises(InvalidArgument) as caught:
            expand(request, template())
        assert caught.value.field == field
