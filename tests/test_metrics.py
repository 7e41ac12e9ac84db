"""Every role serves Prometheus metrics on its metrics port (``DFLEET_METRICS_PORT``; the
heartbeat in Redis says which port 0 picked): after one ControlNet + LoRA request, a real
HTTP GET /metrics on every replica returns the role's histograms, parsed by
prometheus_client's own text parser."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import dfleet
from services.common.fleet_state import FleetState
from tests.diffusers_reference import sample_image

EXPECTED = {
    "gateway": {"dfleet_gateway_request_duration_seconds",
                "dfleet_gateway_time_to_first_step_seconds"},
    "denoiser": {"dfleet_denoiser_step_duration_seconds", "dfleet_denoiser_batch_size_requests",
                 "dfleet_denoiser_active_requests", "dfleet_denoiser_lora_patch_switches"},
    "text_encoder": {"dfleet_text_encoder_encode_duration_seconds"},
    "vae": {"dfleet_vae_decode_duration_seconds"},
    "lora_cache": {"dfleet_lora_cache_lookups", "dfleet_lora_cache_load_duration_seconds"},
    "controlnet": {"dfleet_controlnet_cache_hits"},
}


def scrape(port: int) -> dict[str, Any]:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert response.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def samples(family: Any, suffix: str = "") -> list[Any]:
    return [s for s in family.samples if s.name == family.name + suffix]


@pytest.fixture(scope="module")
def scraped(fleet: Any) -> dict[str, dict[str, Any]]:
    with dfleet.Client(fleet.gateway_address, timeout=120) as client:
        client.generate("a red fox", seed=1, steps=4, loras=[dfleet.Lora("tiny-lora-r4", 0.7)],
                        controlnets=[dfleet.ControlNet("tiny-cn-a", image=sample_image(3))])
    state = FleetState.from_url(fleet.redis_url)
    found = {}
    for role in EXPECTED:
        replicas = state.replicas(role)
        assert replicas, f"no {role} replica in Redis"
        port = int(replicas[0].extra["metrics_port"])
        found[role] = scrape(port)
    return found


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_every_role_serves_its_histograms(scraped: dict[str, dict[str, Any]],
                                          role: str) -> None:
    families = scraped[role]
    missing = EXPECTED[role] - set(families)
    assert not missing, f"{role} lacks {missing}"
    rpc = families["dfleet_rpc_server_duration_seconds"]
    counts = [s for s in samples(rpc, "_count") if s.labels["role"] == role and s.value > 0]
    assert counts, f"{role} timed no RPC"
    assert "dfleet_transport_bytes" in families  # the transport's counters are served too


def test_histograms_hold_the_request(scraped: dict[str, dict[str, Any]]) -> None:
    gateway = scraped["gateway"]["dfleet_gateway_request_duration_seconds"]
    ok = [s for s in samples(gateway, "_count") if s.labels["status"] == "OK"
          and s.labels["model"] == "tiny-sd"
          and set(s.labels["workflow"].split("+")) == {"txt2img", "controlnet", "lora"}]
    assert ok and ok[0].value >= 1  # the fleet is shared: other tests' requests count too
    steps = samples(scraped["denoiser"]["dfleet_denoiser_step_duration_seconds"], "_count")
    assert sum(s.value for s in steps) >= 4
    lookups = samples(scraped["lora_cache"]["dfleet_lora_cache_lookups"], "_total")
    assert "tiny-lora-r4" in {s.labels["model"] for s in lookups}
    decode = samples(scraped["vae"]["dfleet_vae_decode_duration_seconds"], "_count")
    assert sum(s.value for s in decode) >= 1
