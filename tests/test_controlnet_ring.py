"""ControlNet steps through the step ring, against real ControlNet service processes.

Covers: the ring and the gRPC path give the same residuals, equal to the model run in this
process; 1,000 steps over several streams leave no segment, ring or lease behind in either
process (the ControlNet's own Prometheus figures, /dev/shm, the denoiser side's lease table);
the ring is what carries the steps (no fallback counted) unless the ControlNet refuses it
(--no-step-ring) or the peer is on another host, each fallback counted by reason; a step with
a scale that is not a finite number is INVALID_ARGUMENT naming the field on both paths; a
ControlNet killed with SIGKILL in the middle of a request ends that request with UNAVAILABLE
naming the ControlNet, and the ring's segments of both processes are gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch
from diffusers import ControlNetModel

from services.common.channels import ChannelPool
from services.common.errors import InvalidArgument, Unavailable
from services.common.model_store import ModelStore
from services.common.transport import (
    MESSAGE_SIZE_OPTIONS,
    TensorExporter,
    TensorImporter,
    add_tensor_leases,
    local_peer,
    metrics,
)
from services.denoiser.addons.controlnet import ControlNetRequest, ControlNetSpec
from services.denoiser.controlnet_link import ControlNetLink
from services.denoiser.engine import DenoiserEngine
from services.denoiser.job import DenoiseJob
from services.denoiser.offline import encode_prompts, run
from services.denoiser.unet_models import unet_loader

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 60.0


@dataclass
class ControlNetProcess:
    process: subprocess.Popen[bytes]
    address: str
    metrics_url: str

    def figure(self, name: str) -> float:
        """A metric of the process with role="controlnet" (0 when never set)."""
        text = urllib.request.urlopen(self.metrics_url, timeout=30).read().decode()
        prefix = f'{name}{{role="controlnet"}} '
        values = [float(line[len(prefix):]) for line in text.splitlines()
                  if line.startswith(prefix)]
        return values[0] if values else 0.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def controlnet_process(models: Path, *flags: str) -> Iterator[ControlNetProcess]:
    port_file = Path(tempfile.mkdtemp()) / "port"
    metrics_port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "services.controlnet", "--models-dir", str(models), "--port", "0",
         "--port-file", str(port_file), "--log-level", "WARNING", "--torch-threads", "1",
         "--metrics-port", str(metrics_port), *flags],
        cwd=ROOT, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    try:
        deadline = time.monotonic() + 120
        while not port_file.exists() or not port_file.read_text().strip():
            assert process.poll() is None and time.monotonic() < deadline, "no ControlNet"
            time.sleep(0.05)
        yield ControlNetProcess(process, f"127.0.0.1:{port_file.read_text().strip()}",
                                f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:  # a very busy machine: not what is tested here
                process.kill()
                process.wait(30)


@dataclass
class DenoiserSide:
    """What a denoiser process brings to a link: an exporter with its lease service."""

    exporter: TensorExporter
    importer: TensorImporter
    channels: ChannelPool


@pytest.fixture
def denoiser_side() -> Iterator[DenoiserSide]:
    server = grpc.server(futures.ThreadPoolExecutor(4), options=MESSAGE_SIZE_OPTIONS)
    port = server.add_insecure_port("127.0.0.1:0")
    exporter = TensorExporter(f"127.0.0.1:{port}", role="denoiser-test")
    add_tensor_leases(server, exporter)
    server.start()
    side = DenoiserSide(exporter, TensorImporter(role="denoiser-test"), ChannelPool())
    yield side
    side.importer.close()
    side.channels.close()
    server.stop(0)
    exporter.close()


def _link(side: DenoiserSide, address: str, rid: str, cond: torch.Tensor, embeds: torch.Tensor,
          ring: bool = True, peer_host: str | None = None) -> ControlNetLink:
    peer = local_peer()
    if peer_host is not None:
        peer.host_id = peer_host
    return ControlNetLink(side.channels, address, rid, "tiny-cn-a", cond, embeds, side.exporter,
                          side.importer, peer, local_peer(), 600.0, ring=ring)


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 3, 64, 64, generator=g), torch.randn(2, 77, 32, generator=g),
            torch.randn(2, 4, 8, 8, generator=g))


def _segments_of(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith("dfleet-") and f"-{pid}-" in n]


def _fallbacks(reason: str) -> float:
    return metrics.FALLBACKS.labels("denoiser-test", reason)._value.get()


def _until(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_ring_and_grpc_path_give_the_model_residuals(tiny_models: Path,
                                                     denoiser_side: DenoiserSide) -> None:
    cond, embeds, latents = _inputs(1)
    model = ControlNetModel.from_pretrained(tiny_models / "controlnets" / "tiny-cn-a",
                                            local_files_only=True).eval()
    t = torch.tensor(801.0, dtype=torch.float64)
    with torch.inference_mode():
        down, mid = model(latents, t, encoder_hidden_states=embeds, controlnet_cond=cond,
                          conditioning_scale=0.8, return_dict=False)
    refused_before = _fallbacks("ring_refused")
    answers = []
    with controlnet_process(tiny_models) as on, controlnet_process(tiny_models,
                                                                   "--no-step-ring") as off:
        for address, ring in ((on.address, True), (off.address, True), (on.address, False)):
            link = _link(denoiser_side, address, f"eq-{ring}-{address}", cond, embeds, ring)
            assert (link._ring is not None) == (ring and address == on.address)
            try:
                for _ in range(2):
                    link.send(0, latents, t, 0.8)
                    got_down, (got_mid,) = link.receive()
                    answers.append(torch.cat([x.flatten() for x in (*got_down, got_mid)]))
            finally:
                link.close()
    assert _fallbacks("ring_refused") == refused_before + 1
    # the same single-threaded computation whatever the path; this process's thread count
    # may order the sums differently
    assert all(torch.equal(answer, answers[0]) for answer in answers)
    expected = torch.cat([x.flatten() for x in (*down, mid)])
    assert (answers[0] - expected).abs().max().item() <= 1e-5


def test_another_host_goes_by_grpc_and_is_counted(tiny_models: Path,
                                                  denoiser_side: DenoiserSide) -> None:
    cond, embeds, latents = _inputs(2)
    before = _fallbacks("ring_other_host")
    with controlnet_process(tiny_models) as cn:
        link = _link(denoiser_side, cn.address, "other-host", cond, embeds,
                     peer_host="another-host")
        try:
            assert link._ring is None
            link.send(0, latents, torch.tensor(500.0), 1.0)
            link.receive()
        finally:
            link.close()
    assert _fallbacks("ring_other_host") == before + 1


def test_a_bad_step_is_invalid_argument_on_both_paths(tiny_models: Path,
                                                      denoiser_side: DenoiserSide) -> None:
    cond, embeds, latents = _inputs(5)
    with controlnet_process(tiny_models) as cn:
        for ring in (True, False):
            link = _link(denoiser_side, cn.address, f"nan-{ring}", cond, embeds, ring)
            try:
                link.send(0, latents, torch.tensor(500.0), float("nan"))
                with pytest.raises(InvalidArgument, match="step.conditioning_scale"):
                    link.receive()
            finally:
                link.close()


@pytest.mark.parametrize("ring", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["ring", "grpc"])  # the gRPC path's thousand steps: -m slow
def test_a_thousand_steps_leave_nothing_behind(tiny_models: Path, denoiser_side: DenoiserSide,
                                               ring: bool) -> None:
    cond, embeds, latents = _inputs(3)
    exported = metrics.EXPORTED_TENSORS.labels("denoiser-test", "ring")._value.get()
    with controlnet_process(tiny_models) as cn:
        for stream in range(4):
            link = _link(denoiser_side, cn.address, f"many-{ring}-{stream}", cond, embeds, ring)
            try:
                for step in range(250):
                    link.send(step, latents + step, torch.tensor(999.0 - step), 1.0)
                    link.receive()
            finally:
                link.close()
        _until(lambda: cn.figure("dfleet_transport_rings_open") == 0, "a ControlNet ring open")
        _until(lambda: cn.figure("dfleet_transport_active_leases") == 0, "ControlNet leases")
        _until(lambda: denoiser_side.exporter.active_leases() == 0, "denoiser-side leases")
        assert metrics.RINGS_OPEN.labels("denoiser-test")._value.get() == 0
        if ring:
            assert cn.figure("dfleet_transport_shm_segment_bytes") == 0
            assert not _segments_of(cn.process.pid)
            assert not _segments_of(os.getpid())
            assert (metrics.EXPORTED_TENSORS.labels("denoiser-test", "ring")._value.get()
                    == exported + 1000)


def test_a_killed_controlnet_ends_the_request_and_frees_the_ring(tiny_models: Path,
                                                                 denoiser_side: DenoiserSide
                                                                 ) -> None:
    store = ModelStore(tiny_models)
    positive, negative = encode_prompts(store, "tiny-sd", ["a house", ""])
    cond = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    engine = DenoiserEngine(unet_loader(store).get)
    try:
        with controlnet_process(tiny_models) as cn:
            before = set(_segments_of(os.getpid()))
            link = _link(denoiser_side, cn.address, "killed", torch.cat([cond] * 2),
                         torch.cat([negative, positive]))
            assert link._ring is not None
            job = DenoiseJob(request_id="killed", model="tiny-sd", prompt_embeds=positive,
                             negative_prompt_embeds=negative, width=64, height=64,
                             num_inference_steps=400, guidance_scale=7.5, seed=1,
                             addons={"controlnet": ControlNetRequest(
                                 (ControlNetSpec("tiny-cn-a", cn.address, cond),))})

            def kill_at_step_3(event: object) -> None:
                if getattr(event, "step", 0) == 3 and cn.process.poll() is None:
                    cn.process.send_signal(signal.SIGKILL)
                    cn.process.wait(30)

            with pytest.raises(Unavailable, match=f"controlnet {cn.address}"):
                run(engine, job, [link], on_step=kill_at_step_3)
            assert cn.process.returncode == -signal.SIGKILL
            _until(lambda: not _segments_of(cn.process.pid), "the dead ControlNet's ring")
            _until(lambda: set(_segments_of(os.getpid()))
                   <= before | _exporter_segments(denoiser_side), "the denoiser side's ring")
            _until(lambda: metrics.RINGS_OPEN.labels("denoiser-test")._value.get() == 0,
                   "the ring stream still open")
    finally:
        engine.stop()


def _exporter_segments(side: DenoiserSide) -> set[str]:
    prefix = side.exporter.segment_prefix
    return {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}
