"""Quality tiers: ``full`` is the default and always honoured, ``fast`` runs the model's
slimmed tier, ``auto`` runs it only when the full tier would miss the deadline, and requests
with add-ons made for the full UNet's shapes never go to it. Placement is tested on the
gateway's own request flow over a fleet of reported replicas; a live fleet serves a real
slimmed tier (a narrower UNet cut from the tiny one) and says which tier ran."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest

import dfleet
from services.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.common.fleet_state import ReplicaInfo
from services.common.model_store import ModelStore
from services.common.transport import host_id
from services.gateway import request_flow, tiers
from services.gateway.generation import Generation
from services.gateway.request_flow import RequestFlow

FULL, SLIM = "tiny-sd", "tiny-sd-slim"


def write_slim_tier(source: Path, target: Path) -> None:
    """``SLIM``: the tiny pipeline with a UNet of half its widths, cut from the full one."""
    from diffusers import UNet2DConditionModel

    from training.slim_unet import slim_unet

    shutil.copytree(source / FULL, target / SLIM)
    shutil.rmtree(target / SLIM / "unet")
    full = UNet2DConditionModel.from_pretrained(source / FULL / "unet", local_files_only=True)
    widths = [w // 2 for w in full.config.block_out_channels]
    slim, _ = slim_unet(full, widths)
    slim.save_pretrained(target / SLIM / "unet", safe_serialization=True)
    (target / SLIM / "tier.json").write_text(json.dumps({"tier": "fast", "base_model": FULL,
                                                         "block_out_channels": widths}))


@pytest.fixture(scope="module")
def tier_models(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiers")
    for folder in (FULL, "controlnets", "loras"):
        shutil.copytree(tiny_models / folder, root / folder)
    write_slim_tier(tiny_models, root)
    return root


class Attached:
    """What the tier rules and placement read of an attachment: its name, what it needs
    resident on the denoiser."""

    def __init__(self, name: str) -> None:
        self.name = name

    def resident(self) -> list[str]:
        return []


def _gen(*attachments: str) -> Generation:
    return Generation(request_id="r", model=FULL, prompt="p", negative_prompt="", width=64,
                      height=64, steps=10, guidance_scale=7.5, seed=0, vae_scale_factor=8,
                      attachments=[Attached(a) for a in attachments])  # type: ignore[misc]


def test_full_is_the_default_and_honoured_with_a_slim_tier_at_hand(tier_models: Path) -> None:
    store = ModelStore(tier_models)
    assert tiers.slim_tier_of(store, FULL) == SLIM
    for quality in ("", "full"):
        gen = _gen()
        tiers.apply(quality, gen, store)
        assert (gen.model, gen.tier, gen.slim_model, gen.quality) == (FULL, "full", "", "full")


def test_fast_runs_the_slim_tier_unless_an_addon_needs_the_full_shapes(
        tier_models: Path, tiny_models: Path) -> None:
    store = ModelStore(tier_models)
    gen = _gen("preview", "cfg_partner")
    tiers.apply("fast", gen, store)
    assert (gen.model, gen.tier) == (SLIM, "fast")
    for addon in ("controlnet", "lora", "ip_adapter", "template_edit"):
        with pytest.raises(InvalidArgument, match=addon) as err:
            tiers.apply("fast", _gen(addon), store)
        assert err.value.field == "quality"
    with pytest.raises(FailedPrecondition, match="no slimmed tier") as missing:
        tiers.apply("fast", _gen(), ModelStore(tiny_models))
    assert missing.value.field == "quality"
    with pytest.raises(InvalidArgument, match="'best' is not one of") as bad:
        tiers.apply("best", _gen(), store)
    assert bad.value.field == "quality"


def test_auto_never_offers_the_slim_tier_to_controlnet_or_lora(tier_models: Path) -> None:
    store = ModelStore(tier_models)
    for addon in ("controlnet", "lora"):
        gen = _gen(addon)
        tiers.apply("auto", gen, store)
        assert (gen.model, gen.slim_model) == (FULL, "")
    plain = _gen("preview")
    tiers.apply("auto", plain, store)
    assert (plain.model, plain.slim_model) == (FULL, SLIM)


class Fleet:
    """A busy replica holding the full tier, an idle one holding the slim tier."""

    def replicas(self, role: str) -> list[ReplicaInfo]:
        if role != "denoiser":
            return [ReplicaInfo(f"{role}-0", role, "a:0", host_id(), models=(FULL, SLIM))]
        limited = {"step_ms": "100", "max_active_requests": "1"}
        return [ReplicaInfo("busy", "denoiser", "a:1", host_id(), models=(FULL,), load=8,
                            extra=limited),
                ReplicaInfo("idle", "denoiser", "a:2", host_id(), models=(SLIM,), extra=limited)]


def _place(quality: str, deadline_s: float | None, store: ModelStore,
           *attachments: str) -> Generation:
    import time

    flow = RequestFlow(Fleet(), None, None, None, 0, replica_wait_s=0)  # type: ignore[arg-type]
    gen = _gen(*attachments)
    tiers.apply(quality, gen, store)
    deadline = None if deadline_s is None else time.monotonic() + deadline_s
    replicas = flow._place(gen, deadline)
    flow.placer.unassign(replicas.place.denoiser.replica_id)
    assert gen.tier == ("fast" if gen.model == SLIM else "full")
    return gen


def test_auto_takes_the_slim_tier_under_load_and_only_when_the_full_would_miss(
        tier_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A plain request's other workflow nodes (its text encoding and decoding) cost nothing
    # here and need no replicas of their own: placement is the denoiser's.
    monkeypatch.setattr(request_flow, "run_nodes", lambda gen: [])
    monkeypatch.setattr(request_flow, "other_nodes", lambda gen: [])
    store = ModelStore(tier_models)
    # Full: 9 s queued on the busy replica, or a 3 s model load and 1 s on the idle one.
    assert _place("auto", 2.0, store).model == SLIM
    assert _place("auto", 30.0, store).model == FULL
    assert _place("auto", None, store).model == FULL
    with pytest.raises(ResourceExhausted, match="deadline"):
        _place("full", 2.0, store)
    with pytest.raises(ResourceExhausted, match="deadline"):
        _place("auto", 2.0, store, "controlnet")


def test_a_live_fleet_serves_the_slim_tier_and_says_which_ran(tier_models: Path,
                                                               tmp_path: Path) -> None:
    from dfleet.local_fleet import LocalFleet

    with LocalFleet(str(tier_models), state_dir=str(tmp_path / "fleet"),
                    env={"OMP_WAIT_POLICY": "PASSIVE", "DFLEET_METRICS_PORT": "0"}) as fleet, \
            dfleet.Client(fleet.gateway_address, timeout=120) as client:
        ran: dict[str, Any] = {}
        for quality in ("full", "fast", "auto"):
            result = client.generate("a red circle", model=FULL, steps=3, seed=1,
                                     quality=quality)
            ran[quality] = (result.metadata["tier"], result.metadata["model"])
        assert ran == {"full": ("full", FULL), "fast": ("fast", SLIM), "auto": ("full", FULL)}
        with pytest.raises(dfleet.FleetError) as err:
            client.generate("a red circle", model=FULL, steps=3, quality="fast",
                            loras=[dfleet.Lora("tiny-lora-r4")])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.field == "quality"


def test_a_request_auto_moves_to_the_slim_tier_counts_on_the_slim_node(
        tier_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller scales each tier on its own queue depth: a request that placement moves
    to the slimmed tier is counted on ``denoiser:<slim>`` while it denoises, not on the full
    model's node, and on none once it ends."""
    from collections import Counter
    from types import SimpleNamespace

    from services.gateway.depth import DepthTracker

    class Depths:
        def __init__(self) -> None:
            self.depth: Counter[str] = Counter()

        def add_depth(self, role: str, model: str, delta: int) -> int:
            self.depth[f"{role}:{model}"] += delta
            return self.depth[f"{role}:{model}"]

    class Denoised(Exception):
        pass

    depths = Depths()
    seen: dict[str, int] = {}
    flow = RequestFlow(Fleet(), None, None, None, 0, replica_wait_s=0)  # type: ignore[arg-type]
    gen = _gen()
    tiers.apply("auto", gen, ModelStore(tier_models))

    def place(gen: Generation, deadline: float | None) -> object:
        tiers.use_slim(gen, gen.slim_model)   # as placement does when the full would miss
        return SimpleNamespace(place=None)

    def denoise(*_: object) -> None:
        seen.update(depths.depth)
        raise Denoised

    monkeypatch.setattr(request_flow, "early_depth", lambda gen: [])
    monkeypatch.setattr(flow, "_place", place)
    monkeypatch.setattr(flow.executor, "before_denoise", lambda *_: None)
    monkeypatch.setattr(flow, "_denoise", denoise)
    with pytest.raises(Denoised):
        flow._attempt(gen, [], None, None, lambda *_: None, lambda: False,  # type: ignore[arg-type]
                      DepthTracker(depths), 0.0)  # type: ignore[arg-type]
    assert seen == {f"denoiser:{FULL}": 0, f"denoiser:{SLIM}": 1}
    assert set(depths.depth.values()) == {0}
