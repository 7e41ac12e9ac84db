"""The gateway's public API on a live fleet: bad requests, cancel, deadlines, GetRequest,
the Redis request log (acknowledged only at a terminal state, orphans recovered) and
per-node queue depth. After every failure the fleet keeps serving.
"""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import grpc
import PIL.Image
import pytest
import redis

import dfleet
from diffusion.v1 import gateway_pb2
from services.common.fleet_state import FleetState
from tests.diffusers_reference import sample_image, sample_mask


def png(image: PIL.Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


IMG = sample_image(5)
MASK = sample_mask()

BAD: dict[str, tuple[dict[str, Any], grpc.StatusCode, str]] = {
    "width_not_multiple": (dict(width=60), grpc.StatusCode.INVALID_ARGUMENT, "width"),
    "height_too_large": (dict(height=8192), grpc.StatusCode.INVALID_ARGUMENT, "height"),
    "too_many_steps": (dict(steps=5000), grpc.StatusCode.INVALID_ARGUMENT,
                       "num_inference_steps"),
    "negative_guidance": (dict(guidance_scale=-1.0), grpc.StatusCode.INVALID_ARGUMENT,
                          "guidance_scale"),
    "unknown_model": (dict(model="no-such-model"), grpc.StatusCode.NOT_FOUND, "model"),
    "unknown_controlnet": (dict(controlnets=[dfleet.ControlNet("nope", image=IMG)]),
                           grpc.StatusCode.NOT_FOUND, "controlnets[0].name"),
    "unknown_lora": (dict(loras=[dfleet.Lora("nope")]), grpc.StatusCode.NOT_FOUND,
                     "loras[0].name"),
    "duplicate_lora": (dict(loras=[dfleet.Lora("tiny-lora-r4"), dfleet.Lora("tiny-lora-r4")]),
                       grpc.StatusCode.INVALID_ARGUMENT, "loras[1].name"),
    "mask_without_image": (dict(mask=MASK), grpc.StatusCode.INVALID_ARGUMENT, "mask"),
    "mask_size_mismatch": (dict(model="tiny-sd-inpainting", image=IMG,
                                mask=MASK.resize((32, 32))),
                           grpc.StatusCode.INVALID_ARGUMENT, "mask"),
    "inpainting_without_mask": (dict(model="tiny-sd-inpainting"),
                                grpc.StatusCode.INVALID_ARGUMENT, "mask"),
    "mask_on_base_model": (dict(image=IMG, mask=MASK), grpc.StatusCode.INVALID_ARGUMENT,
                           "model"),
    "strength_without_image": (dict(strength=0.5), grpc.StatusCode.INVALID_ARGUMENT,
                               "strength"),
    "strength_above_one": (dict(image=IMG, strength=1.5), grpc.StatusCode.INVALID_ARGUMENT,
                           "strength"),
    "unreadable_image": (dict(image=b"not a png"), grpc.StatusCode.INVALID_ARGUMENT, "image"),
    "controlnet_bad_window": (dict(controlnets=[dfleet.ControlNet(
        "tiny-cn-a", image=IMG, guidance_start=0.8, guidance_end=0.2)]),
        grpc.StatusCode.INVALID_ARGUMENT, "controlnets[0].guidance_start"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_request_names_the_field(fleet: Any, case: str) -> None:
    params, code, field = BAD[case]
    with dfleet.Client(fleet.gateway_address, timeout=60) as client:
        with pytest.raises(dfleet.FleetError) as caught:
            client.generate("a cat", **{"steps": 2, **params})
    assert caught.value.code == code
    assert caught.value.field == field, str(caught.value)
    assert field in caught.value.message or field in str(caught.value)


def test_empty_prompt_is_refused(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address) as client:
        with pytest.raises(dfleet.InvalidArgument) as caught:
            client.generate("   ", steps=2)
    assert caught.value.field == "prompt"


def test_fleet_keeps_serving_after_bad_requests(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address) as client:
        for params, _, _ in BAD.values():
            with pytest.raises(dfleet.FleetError):
                client.generate("a cat", **{"steps": 2, **params})
        result = client.generate("a cat", steps=3, seed=3)
    assert result.image.size == (64, 64)


def _first_progress_then(client: dfleet.Client, action: Any, **params: Any) -> Exception:
    """Streams a request; at the first progress event runs ``action(request_id)``."""
    try:
        for event in client.stream("a long job", **params):
            if isinstance(event, dfleet.Progress) and event.step == 1:
                action(event.request_id)
    except dfleet.FleetError as exc:
        return exc
    raise AssertionError("the request was not stopped")


def test_cancel_stops_a_running_request(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=120) as client, \
            dfleet.Client(fleet.gateway_address) as other:
        ids: list[str] = []

        def cancel(request_id: str) -> None:
            ids.append(request_id)
            assert other.cancel(request_id)

        error = _first_progress_then(client, cancel, steps=200)
        assert isinstance(error, dfleet.Cancelled), error
        status = other.get(ids[0])
        assert status.state == dfleet.RequestState.CANCELLED
        assert status.step < 200
        assert not other.cancel(ids[0])


def test_hopeless_deadline_is_refused_at_admission(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address) as client:
        with pytest.raises(dfleet.ResourceExhausted) as caught:
            client.generate("slow", steps=200, timeout=1.0)
        assert "deadline" in caught.value.message
        assert client.generate("quick", steps=2).image is not None


def test_deadline_stops_the_denoiser_mid_run(fleet: Any) -> None:
    """A node service enforces the deadline it is called with, at a step boundary."""
    from diffusion.v1 import (
        denoiser_pb2,
        denoiser_pb2_grpc,
        text_encoder_pb2,
        text_encoder_pb2_grpc,
    )

    address = {s.role: s.address for s in fleet.services}
    with grpc.insecure_channel(address["text_encoder"]) as te_channel, \
            grpc.insecure_channel(address["denoiser"]) as den_channel:
        embeds = text_encoder_pb2_grpc.TextEncoderStub(te_channel).Encode(
            text_encoder_pb2.EncodeRequest(request_id="dl-1", model="tiny-sd", inputs=[
                text_encoder_pb2.PromptInput(text="slow"), text_encoder_pb2.PromptInput()]),
            timeout=30).prompts
        call = denoiser_pb2_grpc.DenoiserStub(den_channel).Denoise(
            denoiser_pb2.DenoiseRequest(
                request_id="dl-1", model="tiny-sd", conditioning=embeds[0],
                negative_conditioning=embeds[1], width=64, height=64,
                num_inference_steps=500, guidance_scale=7.5, seed=1), timeout=1.0)
        steps = 0
        with pytest.raises(grpc.RpcError) as caught:
            for event in call:
                steps = max(steps, event.progress.step)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert steps < 500
    with dfleet.Client(fleet.gateway_address) as client:
        assert client.generate("after", steps=2).image is not None


def test_get_request_returns_the_result(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address) as client:
        result = client.generate("a boat", steps=3, seed=4, request_id="boat-1")
        status = client.get("boat-1")
        with pytest.raises(dfleet.NotFound):
            client.get("never-sent")
    assert result.request_id == "boat-1"
    assert status.state == dfleet.RequestState.SUCCEEDED
    assert status.result is not None and status.result.png == result.png


def _pending(r: redis.Redis) -> int:
    total = 0
    for key in r.scan_iter(match="dfleet:requests:*"):
        total += r.xpending(key, "gateway")["pending"]
    return total


def test_request_log_is_acknowledged_only_at_the_end(fleet: Any) -> None:
    r = redis.Redis.from_url(fleet.redis_url)
    state = FleetState(r)
    seen: list[int] = []
    depths: list[dict[str, int]] = []
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        for event in client.stream("a hill", steps=30, controlnets=[
                dfleet.ControlNet("tiny-cn-b", image=IMG)]):
            if isinstance(event, dfleet.Progress) and event.step == 10:
                seen.append(_pending(r))
                depths.append(state.depths())
    assert seen == [1]
    during = depths[0]
    assert during["denoiser:tiny-sd"] == 1 and during["controlnet:tiny-cn-b"] == 1
    assert during.get("text_encoder:tiny-sd", 0) == 0
    assert _pending(r) == 0
    after = state.depths()
    assert all(v == 0 for v in after.values()), after


def test_orphaned_request_is_recovered(fleet: Any) -> None:
    """A request left pending by a gateway that died is run to the end by a live one."""
    r = redis.Redis.from_url(fleet.redis_url)
    stream = "dfleet:requests:gateway-dead0001"
    r.xgroup_create(stream, "gateway", id="0", mkstream=True)
    request = gateway_pb2.GenerateRequest(request_id="orphan-1", model="tiny-sd",
                                          prompt="left behind", num_inference_steps=3)
    r.xadd(stream, {"request_id": "orphan-1", "request": request.SerializeToString()})
    r.xreadgroup("gateway", "gateway-dead0001", {stream: ">"})
    deadline = time.monotonic() + 60
    with dfleet.Client(fleet.gateway_address) as client:
        while time.monotonic() < deadline:
            try:
                status = client.get("orphan-1")
                if status.state == dfleet.RequestState.SUCCEEDED:
                    break
            except dfleet.NotFound:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("the orphaned request was not recovered")
    assert status.result is not None and status.result.png.startswith(b"\x89PNG")
    assert not r.exists(stream) or r.xpending(stream, "gateway")["pending"] == 0


def test_same_request_id_twice_at_once_is_refused(fleet: Any) -> None:
    errors: list[Exception] = []
    started = threading.Event()

    def first() -> None:
        with dfleet.Client(fleet.gateway_address) as client:
            for _event in client.stream("twice", steps=60, request_id="dup-1"):
                started.set()

    worker = threading.Thread(target=first)
    worker.start()
    started.wait(30)
    with dfleet.Client(fleet.gateway_address) as client:
        try:
            client.generate("twice", steps=2, request_id="dup-1")
        except dfleet.FleetError as exc:
            errors.append(exc)
    worker.join(60)
    assert errors and errors[0].code == grpc.StatusCode.ALREADY_EXISTS
