"""The gateway under many streams and large messages, as a real process (Redis + gateway).

The fleet has no denoiser, so every Generate waits for one (placement waits for a role
with no live replica): 100 such streams stay open and idle while health checks, Cancel,
GetRequest and ListModels are answered. Messages over the public port's limit are refused
RESOURCE_EXHAUSTED, and the gateway's memory comes back after large refused requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import dfleet
from dfleet.local_fleet import ROLES, LocalFleet
from diffusion.v1 import gateway_pb2, gateway_pb2_grpc

STREAMS = 100
ANSWER_S = 10.0   # a starved server answers never; this only bounds the wait


@pytest.fixture(scope="module")
def lone_gateway(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[LocalFleet]:
    local = LocalFleet(str(tiny_models), state_dir=str(tmp_path_factory.mktemp("lone")),
                       replicas={role: 0 for role in ROLES if role != "gateway"},
                       env={"DFLEET_REPLICA_WAIT_S": "600", "DFLEET_MAX_INFLIGHT": str(STREAMS)})
    with local:
        yield local


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_control_calls_answer_while_100_streams_wait(lone_gateway: LocalFleet) -> None:
    address = lone_gateway.gateway_address
    channel = grpc.insecure_channel(address)
    stub = gateway_pb2_grpc.GatewayStub(channel)
    queued = threading.Semaphore(0)
    calls: list[Any] = []

    def open_stream(i: int) -> None:
        call = stub.Generate(gateway_pb2.GenerateRequest(
            request_id=f"idle-{i}", prompt="waits for a denoiser", num_inference_steps=2),
            timeout=300)
        calls.append(call)
        try:
            for event in call:
                if event.HasField("queued"):
                    queued.release()
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=open_stream, args=(i,), daemon=True)
               for i in range(STREAMS)]
    try:
        for thread in threads:
            thread.start()
        for _ in range(STREAMS):
            assert queued.acquire(timeout=120), "a stream was not admitted"
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=ANSWER_S)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with dfleet.Client(address, timeout=ANSWER_S) as client:
            assert client.get("idle-7").state == dfleet.RequestState.RUNNING
            assert [m.name for m in client.models()]
            with pytest.raises(dfleet.ResourceExhausted) as refused:   # max_inflight
                client.generate("one too many", steps=2)
            assert "in flight" in refused.value.message
            assert client.cancel("idle-3")
    finally:
        for call in calls:
            call.cancel()
        channel.close()


def test_public_port_limit_and_memory_after_refused_requests(lone_gateway: LocalFleet) -> None:
    gateway = next(s for s in lone_gateway.services if s.role == "gateway")
    big = 64 << 20
    options = [("grpc.max_send_message_length", 4 * big)]
    with grpc.insecure_channel(gateway.address, options=options) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        def send(nbytes: int) -> grpc.StatusCode:
            request = gateway_pb2.GenerateRequest(
                prompt="big", image=gateway_pb2.ImageInput(data=bytes(nbytes)))
            try:
                list(stub.Generate(request, timeout=120))
            except grpc.RpcError as err:
                return err.code()
            raise AssertionError("a huge request was accepted")

        assert send(48 << 20) == grpc.StatusCode.INVALID_ARGUMENT   # warm-up: image too big
        time.sleep(1.0)
        before = _rss_bytes(gateway.process.pid)
        for _ in range(4):
            assert send(48 << 20) == grpc.StatusCode.INVALID_ARGUMENT   # over max_image_bytes
            assert send(200 << 20) == grpc.StatusCode.RESOURCE_EXHAUSTED  # over the port limit
        time.sleep(1.0)   # the server thread lets go of the last call
        after = _rss_bytes(gateway.process.pid)
    # Four 48 MiB and four 200 MiB messages passed through; kept, they would be ~1 GiB.
    assert after - before < 100 << 20, (before >> 20, after >> 20)
