"""Security through real processes: TLS on every port, mutual TLS between services, token
auth on the gateway, and internal services that check their own inputs and peers.

A fleet runs with a development CA from ``dfleet certs`` and a tokens file: a client
without a token, with a wrong one, or with one that may not make the call is refused;
a good token over TLS gets an image; a token over its rate is refused. An internal
service refuses a plaintext caller and one whose certificate another CA signed. On the
plaintext test fleet, direct calls with bad fields are refused naming the field, and a
Denoise call naming a peer that is not a replica of the fleet is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

import dfleet
from dfleet.certs import tls_env, write_dev_certs
from dfleet.local_fleet import LocalFleet
from diffusion.v1 import denoiser_pb2, denoiser_pb2_grpc, text_encoder_pb2, text_encoder_pb2_grpc
from services.common.tls import TlsFiles, open_channel
from services.gateway.auth import TokenEntry, load_tokens

FULL = "full-access-token-0123456789"
READER = "read-only-token-0123456789"
SLOW = "rate-limited-token-0123456789"


def _tokens_file(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"tokens": [
        {"name": "full", "token": FULL, "priority": "high"},
        {"name": "reader", "token": READER, "allow": ["read"]},
        {"name": "slow", "token": SLOW, "rate_per_s": 0.01, "burst": 1}]}))
    return path


@pytest.fixture(scope="module")
def secure_fleet(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[LocalFleet, dict[str, Path]]]:
    certs = write_dev_certs(tmp_path_factory.mktemp("certs"))
    tokens = _tokens_file(tmp_path_factory.mktemp("auth") / "tokens.yaml")
    local = LocalFleet(str(tiny_models), state_dir=str(tmp_path_factory.mktemp("secure")),
                       replicas={"controlnet": 0, "lora_cache": 0},
                       env={**tls_env(certs), "DFLEET_AUTH_TOKENS_FILE": str(tokens),
                            "OMP_WAIT_POLICY": "PASSIVE"})
    with local:
        yield local, certs


def _client(fleet: LocalFleet, certs: dict[str, Path], token: str) -> dfleet.Client:
    return dfleet.Client(fleet.gateway_address, timeout=120, token=token,
                         tls_ca=str(certs["ca"]))


def test_tokens_decide_who_may_call(secure_fleet: tuple[LocalFleet, dict[str, Path]]) -> None:
    fleet, certs = secure_fleet
    with _client(fleet, certs, "") as anonymous:
        with pytest.raises(dfleet.FleetError) as missing:
            anonymous.models()
    assert missing.value.code == grpc.StatusCode.UNAUTHENTICATED
    with _client(fleet, certs, "not-a-token-of-this-fleet") as stranger:
        with pytest.raises(dfleet.FleetError) as wrong:
            stranger.generate("a cat", steps=2)
    assert wrong.value.code == grpc.StatusCode.UNAUTHENTICATED
    with _client(fleet, certs, READER) as reader:
        assert [m.name for m in reader.models()]
        with pytest.raises(dfleet.FleetError) as denied:
            reader.generate("a cat", steps=2)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "reader" in denied.value.message and "Generate" in denied.value.message
    with _client(fleet, certs, FULL) as full:
        result = full.generate("a cat over TLS", steps=2, seed=1)
    assert result.png.startswith(b"\x89PNG")


def test_a_token_over_its_rate_is_refused(
        secure_fleet: tuple[LocalFleet, dict[str, Path]]) -> None:
    fleet, certs = secure_fleet
    with _client(fleet, certs, SLOW) as slow:
        with pytest.raises(dfleet.InvalidArgument):      # the one call its burst allows
            slow.generate("a cat", steps=2, width=60)
        with pytest.raises(dfleet.ResourceExhausted) as over:
            slow.generate("a cat", steps=2)
    assert "rate" in over.value.message


def test_gateway_refuses_plaintext(secure_fleet: tuple[LocalFleet, dict[str, Path]]) -> None:
    fleet, _ = secure_fleet
    with dfleet.Client(fleet.gateway_address, timeout=20, token=FULL, tls_ca="") as plain:
        with pytest.raises(dfleet.Unavailable):
            plain.models()


def _health(address: str, tls: TlsFiles | None) -> Any:
    with open_channel(address, tls) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=20)


def test_internal_services_accept_only_fleet_peers(
        secure_fleet: tuple[LocalFleet, dict[str, Path]], tmp_path: Path) -> None:
    fleet, certs = secure_fleet
    member = TlsFiles(str(certs["cert"]), str(certs["key"]), str(certs["ca"]))
    other = write_dev_certs(tmp_path / "other-ca")       # a certificate the fleet never signed
    outsider = TlsFiles(str(other["cert"]), str(other["key"]), str(certs["ca"]))
    for service in fleet.services:
        if service.role == "gateway":
            continue
        assert _health(service.address, member).status == health_pb2.HealthCheckResponse.SERVING
        for caller in (None, outsider):
            with pytest.raises(grpc.RpcError) as refused:
                _health(service.address, caller)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, service.role


def _address(fleet: Any, role: str) -> str:
    return next(s.address for s in fleet.services if s.role == role)


DENOISE_OK = dict(request_id="direct-1", model="tiny-sd", width=64, height=64,
                  num_inference_steps=2, guidance_scale=7.5)
BAD_DENOISE = {
    "width": (dict(width=60), grpc.StatusCode.INVALID_ARGUMENT),
    "height": (dict(height=0), grpc.StatusCode.INVALID_ARGUMENT),
    "num_inference_steps": (dict(num_inference_steps=100_000), grpc.StatusCode.INVALID_ARGUMENT),
    "guidance_scale": (dict(guidance_scale=math.nan), grpc.StatusCode.INVALID_ARGUMENT),
    "strength": (dict(strength=math.inf), grpc.StatusCode.INVALID_ARGUMENT),
}


@pytest.mark.parametrize("field", sorted(BAD_DENOISE))
def test_direct_denoise_with_a_bad_field_is_refused(fleet: Any, field: str) -> None:
    change, code = BAD_DENOISE[field]
    with grpc.insecure_channel(_address(fleet, "denoiser")) as channel:
        call = denoiser_pb2_grpc.DenoiserStub(channel).Denoise(
            denoiser_pb2.DenoiseRequest(**{**DENOISE_OK, **change}), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    assert refused.value.code() == code
    assert field in (refused.value.details() or "")


def test_denoiser_dials_only_peers_of_the_fleet(fleet: Any) -> None:
    redis_port = fleet.redis_url.rsplit(":", 1)[1].split("/")[0]
    addons = denoiser_pb2.Addons(controlnet=denoiser_pb2.ControlNets(controlnets=[
        denoiser_pb2.ControlNetAttachment(name="tiny-cn-a", address=f"127.0.0.1:{redis_port}",
                                          scale=1.0)]))
    with grpc.insecure_channel(_address(fleet, "denoiser")) as channel:
        call = denoiser_pb2_grpc.DenoiserStub(channel).Denoise(
            denoiser_pb2.DenoiseRequest(**DENOISE_OK, addons=addons), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            list(call)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "addons.controlnet.controlnets[0].address" in (refused.value.details() or "")


def test_text_encoder_bounds_its_prompts(fleet: Any) -> None:
    with grpc.insecure_channel(_address(fleet, "text_encoder")) as channel:
        stub = text_encoder_pb2_grpc.TextEncoderStub(channel)
        for prompts, field in ((["x"] * 17, "inputs"), (["x" * 30_000], "inputs[0]")):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Encode(text_encoder_pb2.EncodeRequest(
                    request_id="te-bad", model="tiny-sd",
                    inputs=[text_encoder_pb2.PromptInput(text=p) for p in prompts]), timeout=30)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (refused.value.details() or "")


def test_tokens_file_problems_are_named(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    cases = {
        "short": ({"tokens": [{"name": "a", "token": "short"}]}, "16 characters"),
        "priority": ({"tokens": [{"name": "a", "token": FULL, "priority": "urgent"}]},
                     "tokens[0].priority"),
        "allow": ({"tokens": [{"name": "a", "token": FULL, "allow": ["everything"]}]},
                  "tokens[0].allow"),
        "duplicate": ({"tokens": [{"name": "a", "token": FULL}, {"name": "b", "token": FULL}]},
                      "tokens[1]"),
        "empty": ({}, "non-empty list"),
    }
    for body, words in cases.values():
        path.write_text(yaml.safe_dump(body))
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
            load_tokens(str(path))


def test_rate_bucket_refills_at_its_rate() -> None:
    entry = TokenEntry("t", rate_per_s=2.0, burst=2.0)
    assert entry.take(100.0) == 0.0 and entry.take(100.0) == 0.0
    assert entry.take(100.0) == pytest.approx(0.5)
    assert entry.take(100.5) == 0.0                  # one token back after 0.5 s
    assert TokenEntry("free").take(0.0) == 0.0       # no rate: no limit
