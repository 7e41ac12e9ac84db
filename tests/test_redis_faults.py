"""Redis and gateway faults on a live fleet with two gateways and its own redis-server.

- Redis restarted mid-run (SHUTDOWN NOSAVE: it comes back empty on the same port): requests
  in flight finish with an image, a running request is recorded again in the request log,
  new requests are served (the consumer group is created again).
- Redis down: Generate and GetRequest answer UNAVAILABLE, not INTERNAL.
- Two live gateways race for the orphans of a dead one: each orphan runs exactly once.
- A gateway SIGKILLed mid-request: its request is finished by the other gateway, and the
  queue depth it was counting goes back to zero (its counts expire with its heartbeat).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import dfleet
from dfleet.local_fleet import LocalFleet, free_port
from diffusion.v1 import gateway_pb2
from services.common.fleet_state import FleetState

WAIT_S = 120.0


class RedisServer:
    """A redis-server on a fixed port that a test can stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        self.process.wait(30)
        self.process = None


@pytest.fixture(scope="module")
def faults(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[LocalFleet, RedisServer]]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    local = LocalFleet(str(tiny_models), redis_url=server.url,
                       state_dir=str(tmp_path_factory.mktemp("faults")),
                       replicas={"gateway": 2},
                       env={"DFLEET_RECOVER_INTERVAL_S": "1", "DFLEET_ORPHAN_CLAIM_IDLE_S": "6",
                            "DFLEET_MAX_STEPS": "500", "OMP_WAIT_POLICY": "PASSIVE",
                            "DFLEET_ACTIVATION_DIR": str(tmp_path_factory.mktemp("act"))})
    try:
        with local:
            yield local, server
    finally:
        server.stop()


def _gateways(fleet: LocalFleet) -> list[Any]:
    return [s for s in fleet.services if s.role == "gateway" and s.process.poll() is None]


def _pending(r: redis.Redis) -> int:
    total = 0
    for key in r.scan_iter(match="dfleet:requests:*"):
        try:
            total += r.xpending(key, "gateway")["pending"]
        except redis.ResponseError:
            pass
    return total


def _wait(condition: Any, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _stream_until_step(address: str, request_id: str, steps: int, at_step: int,
                       reached: threading.Event, outcome: list[object], side: int = 64) -> None:
    try:
        with dfleet.Client(address, timeout=600) as client:
            for event in client.stream("a long run", steps=steps, seed=1, width=side,
                                       height=side, request_id=request_id):
                if isinstance(event, dfleet.Progress) and event.step >= at_step:
                    reached.set()
                if isinstance(event, dfleet.Result):
                    outcome.append(event)
    except dfleet.FleetError as exc:
        outcome.append(exc)
    reached.set()


def test_redis_restart_mid_run_loses_nothing(faults: tuple[LocalFleet, RedisServer]) -> None:
    fleet, server = faults
    address = _gateways(fleet)[0].address
    long_reached, short_reached = threading.Event(), threading.Event()
    long_outcome: list[object] = []
    short_outcomes: list[list[object]] = [[], []]
    workers = [threading.Thread(target=_stream_until_step, args=(
        address, "restart-long", 500, 2, long_reached, long_outcome, 256))]
    workers += [threading.Thread(target=_stream_until_step, args=(
        address, f"restart-short-{i}", 40, 2, short_reached, short_outcomes[i]))
        for i in range(2)]
    for worker in workers:
        worker.start()
    assert long_reached.wait(WAIT_S) and short_reached.wait(WAIT_S)
    assert not long_outcome, long_outcome         # still running
    server.stop()
    server.start()                                   # empty: no stream, no group, no state
    r = redis.Redis.from_url(server.url)
    # The running request is recorded again (pending) and its state is readable.
    _wait(lambda: _pending(r) >= 1 and r.exists("dfleet:request:restart-long"),
          "the running request to be recorded again")
    with dfleet.Client(address) as client:
        assert client.get("restart-long").state in (dfleet.RequestState.QUEUED,
                                                    dfleet.RequestState.RUNNING)
        fresh = client.generate("after the restart", steps=3, seed=4)  # group made again
        assert fresh.png.startswith(b"\x89PNG")
        assert client.cancel("restart-long")
    for worker in workers:
        worker.join(WAIT_S)
    for outcome in short_outcomes:
        assert len(outcome) == 1 and isinstance(outcome[0], dfleet.Result), outcome
    assert isinstance(long_outcome[0], dfleet.Cancelled), long_outcome
    with dfleet.Client(address) as client:
        assert client.get("restart-long").state == dfleet.RequestState.CANCELLED
    _wait(lambda: _pending(r) == 0, "every entry to be acknowledged")


def test_redis_down_is_unavailable(faults: tuple[LocalFleet, RedisServer]) -> None:
    fleet, server = faults
    address = _gateways(fleet)[0].address
    server.stop()
    try:
        with dfleet.Client(address, timeout=60) as client:
            with pytest.raises(dfleet.Unavailable) as generate:
                client.generate("no redis", steps=2)
            with pytest.raises(dfleet.Unavailable) as get:
                client.get("anything")
        assert "Redis" in generate.value.message and "Redis" in get.value.message
    finally:
        server.start()
    with dfleet.Client(address, timeout=120) as client:
        _wait(lambda: _serves(client), "the fleet to serve again")


def _serves(client: dfleet.Client) -> bool:
    try:
        return client.generate("redis is back", steps=2).png.startswith(b"\x89PNG")
    except dfleet.Unavailable:
        return False


def _orphan(r: redis.Redis, stream: str, request_id: str) -> None:
    request = gateway_pb2.GenerateRequest(request_id=request_id, model="tiny-sd",
                                          prompt="left behind", num_inference_steps=3)
    r.xadd(stream, {"request_id": request_id, "request": request.SerializeToString()})


def _recoveries(fleet: LocalFleet) -> Counter[str]:
    runs: Counter[str] = Counter()
    for service in fleet.services:
        if service.role != "gateway":
            continue
        for line in service.log_file.read_text().splitlines():
            if "recovering an orphaned request" in line:
                runs[json.loads(line)["request_id"]] += 1
    return runs


def test_two_live_gateways_run_each_orphan_once(faults: tuple[LocalFleet, RedisServer]) -> None:
    fleet, server = faults
    assert len(_gateways(fleet)) == 2
    r = redis.Redis.from_url(server.url)
    stream = "dfleet:requests:gateway-gone0001"
    r.xgroup_create(stream, "gateway", id="0", mkstream=True)
    ids = [f"orphan-once-{i}" for i in range(6)]
    for request_id in ids[:4]:                     # delivered to the dead gateway: pending
        _orphan(r, stream, request_id)
    r.xreadgroup("gateway", "gateway-gone0001", {stream: ">"})
    for request_id in ids[4:]:                     # appended but never read by it
        _orphan(r, stream, request_id)
    with dfleet.Client(_gateways(fleet)[0].address) as client:
        _wait(lambda: all(_succeeded(client, i) for i in ids), "every orphan to finish")
    runs = _recoveries(fleet)
    assert {i: runs[i] for i in ids} == {i: 1 for i in ids}, runs
    _wait(lambda: not r.exists(stream), "the dead gateway's stream to be removed")


def _succeeded(client: dfleet.Client, request_id: str) -> bool:
    try:
        return client.get(request_id).state == dfleet.RequestState.SUCCEEDED
    except dfleet.NotFound:
        return False


def test_gateway_crash_mid_request(faults: tuple[LocalFleet, RedisServer]) -> None:
    """The request is finished by the other gateway; the depth counted by the dead one
    expires instead of staying at 1 for the autoscaler."""
    fleet, server = faults
    victim, survivor = _gateways(fleet)
    state = FleetState(redis.Redis.from_url(server.url))
    reached = threading.Event()
    outcome: list[object] = []
    worker = threading.Thread(target=_stream_until_step, args=(
        victim.address, "crash-1", 60, 2, reached, outcome))
    worker.start()
    assert reached.wait(WAIT_S)
    assert state.depths().get("denoiser:tiny-sd", 0) >= 1
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(30)
    worker.join(WAIT_S)
    assert outcome and isinstance(outcome[0], dfleet.FleetError), outcome
    with dfleet.Client(survivor.address) as client:
        _wait(lambda: _succeeded(client, "crash-1"), "the orphan to be finished")
    assert _recoveries(fleet)["crash-1"] == 1
    _wait(lambda: state.depths().get("denoiser:tiny-sd", 0) == 0,
          "the dead gateway's depth to expire")
    with grpc.insecure_channel(survivor.address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
