"""OpenTelemetry traces across the fleet, exported by OTLP/gRPC to a real receiver.

A fleet started with the standard ``OTEL_*`` variables; ``dfleet generate`` (the SDK)
makes one ControlNet + LoRA request under the same variables. One trace then holds
spans from the SDK, gateway, text encoder, denoiser, ControlNet, LoRA cache and VAE,
and every server span's parent is the client span of the service that called it (the
LoRA fetch crosses the denoiser's fetch thread pool, the gateway's work its request
thread), and each of the denoiser's step batches is a span linked to the request's
denoise span. Also: JSON log lines carry the trace and span ids; with tracing off nothing is
installed (plain channels, no spans).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.diffusers_reference import sample_image
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

SERVER, CLIENT = 2, 3  # OTLP span kinds
ROLES = ("gateway", "text_encoder", "denoiser", "controlnet", "lora_cache", "vae")
# (calling service, called service, RPC) pairs the request must show
CALLS = [("dfleet-cli", "dfleet-gateway", "diffusion.v1.Gateway/Generate"),
         ("dfleet-gateway", "dfleet-text_encoder", "diffusion.v1.TextEncoder/Encode"),
         ("dfleet-gateway", "dfleet-lora_cache", "diffusion.v1.LoraCache/Prepare"),
         ("dfleet-gateway", "dfleet-denoiser", "diffusion.v1.Denoiser/Denoise"),
         ("dfleet-denoiser", "dfleet-controlnet", "diffusion.v1.ControlNet/Steps"),
         ("dfleet-denoiser", "dfleet-lora_cache", "diffusion.v1.LoraCache/Fetch"),
         ("dfleet-gateway", "dfleet-vae", "diffusion.v1.Vae/Decode")]


@pytest.fixture(scope="module")
def traced(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[OtlpReceiver, Any, dict[str, str]]]:
    from dfleet.local_fleet import LocalFleet

    with OtlpReceiver() as receiver:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OMP_WAIT_POLICY": "PASSIVE"}
        fleet = LocalFleet(str(tiny_models), state_dir=str(tmp_path_factory.mktemp("traced")),
                           env=otel, http_port=0)
        with fleet:
            yield receiver, fleet, otel


def _trace_of_request(receiver: OtlpReceiver, gateway: str, otel: dict[str, str], tmp: Path
                      ) -> list[ReceivedSpan]:
    cond = tmp / "edges.png"
    sample_image(4).save(cond)
    done = subprocess.run(
        [sys.executable, "-m", "dfleet", "generate", "a red fox", "-o", str(tmp / "fox.png"),
         "--seed", "1", "--steps", "3", "--controlnet", f"tiny-cn-a:{cond}:0.8",
         "--lora", "tiny-lora-r4:0.7", "--gateway", gateway],
        capture_output=True, text=True, timeout=300, env={**os.environ, **otel})
    assert done.returncode == 0, done.stderr
    roots = [s for s in receiver.wait_for(lambda spans: any(
        s.service == "dfleet-cli" for s in spans)) if s.service == "dfleet-cli"]
    assert len(roots) == 1, roots
    trace_id = roots[0].trace_id

    def complete(spans: list[ReceivedSpan]) -> bool:
        # every expected server span, not just a span per service: a service exports its
        # spans in batches, and the gateway's Generate span ends (and is sent) last
        servers = {(s.service, s.name) for s in spans
                   if s.trace_id == trace_id and s.kind == SERVER}
        return {(callee, rpc) for _, callee, rpc in CALLS} <= servers

    return [s for s in receiver.wait_for(complete) if s.trace_id == trace_id]


def test_one_trace_spans_every_node_with_parent_links(traced: Any, tmp_path: Path) -> None:
    receiver, fleet, otel = traced
    spans = _trace_of_request(receiver, fleet.gateway_address, otel, tmp_path)
    by_id = {s.span_id: s for s in spans}
    services = {s.service for s in spans}
    assert {"dfleet-cli", *(f"dfleet-{role}" for role in ROLES)} <= services, services
    root = next(s for s in spans if s.service == "dfleet-cli")
    assert root.parent_id == "" and root.kind == CLIENT
    for caller, callee, rpc in CALLS:
        servers = [s for s in spans if s.service == callee and s.name == rpc
                   and s.kind == SERVER]
        assert servers, f"no {rpc} span in {callee}"
        for server in servers:
            client = by_id.get(server.parent_id)
            assert client is not None, f"{rpc} in {callee}: its parent is not in the trace"
            assert (client.service, client.name, client.kind) == (caller, rpc, CLIENT)
            if caller != "dfleet-cli":  # the caller's client span sits under its own server span
                assert _ancestor_services(client, by_id) >= {caller}
    (denoise,) = [s for s in spans if s.service == "dfleet-denoiser" and s.kind == SERVER
                  and s.name == "diffusion.v1.Denoiser/Denoise"]
    batches = [s for s in receiver.wait_for(lambda got: sum(
        denoise.span_id in s.links for s in got) >= 3) if denoise.span_id in s.links]
    assert len(batches) >= 3, "every step batch links to the request's denoise span"
    assert all(b.name == "denoiser step batch" and b.parent_id == ""
               and b.service == "dfleet-denoiser" for b in batches)
    redis_spans = [s for s in spans if s.name.startswith("redis ")]
    assert redis_spans and all(by_id[s.parent_id].service == "dfleet-gateway"
                               for s in redis_spans if s.service == "dfleet-gateway")


def test_an_http_request_continues_the_callers_trace(traced: Any) -> None:
    """A traceparent header on the HTTP front: FastAPI's own request span continues it, and
    the gateway's spans follow in that trace."""
    import httpx

    receiver, fleet, _ = traced
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    reply = httpx.post(f"http://{fleet.http_address}/v1/generations", timeout=300,
                       headers={"traceparent": f"00-{trace_id}-{parent}-01"},
                       json={"prompt": "a kite", "seed": 4, "steps": 2})
    assert reply.status_code == 200, reply.text

    def arrived(spans: list[ReceivedSpan]) -> bool:
        servers = {s.service for s in spans if s.trace_id == trace_id and s.kind == SERVER}
        return {"dfleet-gateway", "dfleet-http_front"} <= servers

    spans = [s for s in receiver.wait_for(arrived) if s.trace_id == trace_id]
    by_id = {s.span_id: s for s in spans}
    fronts = [s for s in spans if s.service == "dfleet-http_front" and s.kind == SERVER]
    (front,) = fronts
    assert front.parent_id == parent and front.name == "POST /v1/generations"
    (generate,) = [s for s in spans if s.service == "dfleet-gateway" and s.kind == SERVER
                   and s.name == "diffusion.v1.Gateway/Generate"]
    client = by_id[generate.parent_id]
    assert client.service == "dfleet-http_front" and client.kind == CLIENT
    assert front.span_id in _ancestors(client, by_id)  # under the route's span


def _ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> set[str]:
    seen = set()
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        seen.add(span.span_id)
    return seen


def _ancestor_services(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> set[str]:
    seen = set()
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        seen.add(span.service)
        if span.kind == SERVER:
            break
    return seen


def test_log_lines_carry_trace_and_span_ids() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from services.common.settings import JsonFormatter

    record = logging.LogRecord("dfleet.test", logging.INFO, __file__, 1, "hello", None, None)
    assert "trace_id" not in json.loads(JsonFormatter().format(record))
    with TracerProvider().get_tracer("test").start_as_current_span("work") as span:
        line = json.loads(JsonFormatter().format(record))
    context = span.get_span_context()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"


def test_tracing_off_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    from dfleet.tracing import tracing_wanted
    from services.common.channels import ChannelPool
    from services.common.telemetry import tracing
    from services.common.telemetry.rpc import ServerTelemetry

    assert not tracing_wanted({})
    assert not tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317",
                               "OTEL_SDK_DISABLED": "true"})
    assert tracing_wanted({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing.configure_tracing("test") and not tracing.enabled()
    pool = ChannelPool()
    try:
        assert type(pool.get("127.0.0.1:1")).__module__ == "grpc._channel"  # no interceptor
    finally:
        pool.close()
    seen = []

    def handler(request: object, context: object) -> str:
        seen.append(trace.get_current_span())
        return "done"

    class Details:
        method = "/diffusion.v1.Test/Call"
        invocation_metadata = ()

    class Context:
        def code(self) -> None:
            return None

    wrapped = ServerTelemetry("test").intercept_service(
        lambda details: grpc.unary_unary_rpc_method_handler(handler), Details())
    assert wrapped.unary_unary(None, Context()) == "done"
    assert seen == [trace.INVALID_SPAN]


def test_both_sdk_clients_send_the_callers_trace_context() -> None:
    """Inside a caller's span, Client and AsyncClient send its W3C traceparent."""
    import asyncio
    from concurrent import futures

    from opentelemetry.sdk.trace import TracerProvider

    import dfleet
    from diffusion.v1 import gateway_pb2, gateway_pb2_grpc

    seen: list[str] = []

    class Recorder(gateway_pb2_grpc.GatewayServicer):
        def ListModels(self, request: object, context: grpc.ServicerContext) -> object:
            seen.append(dict(context.invocation_metadata()).get("traceparent", ""))
            return gateway_pb2.ListModelsResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    gateway_pb2_grpc.add_GatewayServicer_to_server(Recorder(), server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()

    async def call_async() -> None:
        async with dfleet.AsyncClient(address, timeout=30) as client:
            await client.models()

    try:
        with TracerProvider().get_tracer("test").start_as_current_span("caller") as span:
            with dfleet.Client(address, timeout=30) as client:
                client.models()
            asyncio.run(call_async())
    finally:
        server.stop(None)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert len(seen) == 2 and all(t.split("-")[1] == trace_id for t in seen), seen
