"""The requesting replica's end of a CFG pass stream: unconditional rows out, noise back.

A reader thread takes the partner's answers as they come and wakes the step
loop, which completes the step (guidance and scheduler step) when both
halves of the noise prediction are there.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import torch

from diffusion.v1 import denoiser_pb2, denoiser_pb2_grpc, tensor_pb2
from services.common.channels import ChannelPool
from services.common.errors import Unavailable, from_rpc_error
from services.common.transport import TensorExporter, TensorImporter

log = logging.getLogger("dfleet.denoiser")


class CfgPartnerLink:
    """Opens the stream at construction; then one ``send`` per step and ``poll`` for answers."""

    def __init__(self, channels: ChannelPool, address: str, peer: tensor_pb2.PeerInfo | None,
                 request_id: str, opening: denoiser_pb2.CfgPassOpen,
                 exporter: TensorExporter, importer: TensorImporter,
                 timeout: float | None, on_answer: Callable[[], None]) -> None:
        self.address = address
        self.peer = peer
        self.request_id = request_id
        self.exporter = exporter
        self.importer = importer
        self.on_answer = on_answer
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._answers: queue.Queue[torch.Tensor | Exception] = queue.Queue()
        self._closed = threading.Event()
        self._outbox.put(denoiser_pb2.CfgPassRequest(request_id=request_id, open=opening))
        stub = denoiser_pb2_grpc.DenoiserStub(channels.get(address))
        self._responses: Iterator[denoiser_pb2.CfgPassResponse] = stub.CfgPass(
            iter(self._outbox.get, None), timeout=timeout,
            metadata=(("x-request-id", request_id),))
        self._reader = threading.Thread(target=self._read, name=f"cfg-{request_id}",
                                        daemon=True)
        self._reader.start()

    def send(self, step: int, sample: torch.Tensor, timestep: torch.Tensor,
             with_loras: bool) -> None:
        self._outbox.put(denoiser_pb2.CfgPassRequest(
            request_id=self.request_id,
            step=denoiser_pb2.CfgPassStep(
                step=step, timestep=float(timestep), with_loras=with_loras,
                sample=self.exporter.export(sample, self.peer, request_id=self.request_id))))

    def poll(self) -> torch.Tensor | None:
        """The next answer if it is there; raises what the stream failed with."""
        try:
            answer = self._answers.get_nowait()
        except queue.Empty:
            return None
        if isinstance(answer, Exception):
            raise answer
        return answer

    def _read(self) -> None:
        try:
            for response in self._responses:
                self.exporter.release(response.release_lease_ids)
                self._answers.put(self.importer.load(response.noise_pred))
                self.on_answer()
            if not self._closed.is_set():
                self._answers.put(Unavailable(f"CFG partner {self.address} ended the pass"))
        except grpc.RpcError as err:
            if not self._closed.is_set():
                self._answers.put(from_rpc_error(err, f"CFG partner {self.address}"))
        except Exception as exc:  # noqa: BLE001 - handed to the step loop
            self._answers.put(exc)
        self.on_answer()

    def close(self) -> None:
        self._closed.set()
        self._outbox.put(None)
        cancel = getattr(self._responses, "cancel", None)
        if cancel is not None:
            cancel()
