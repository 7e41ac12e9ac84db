"""The requesting replica's end of a CFG pass stream: unconditional rows out, noise back.

A reader thread takes the partner's answers as they come and wakes the step
loop, which completes the step (guidance and scheduler step) when both
halves of the noise prediction are there. With a partner on this host the rows
and answers go through a step ring (see docs/transport.md); the stream then
carries only the open, the partner's answer to the offer, and the status.
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
from services.common.transport.ring_offer import (
    closed_ring_error,
    offer_message,
    offer_ring,
    settle_offer,
)
from services.common.transport.ring_socket import RingClosed
from services.common.transport.ring_stream import RingStream

log = logging.getLogger("dfleet.denoiser")


class CfgPartnerLink:
    """Opens the stream at construction; then one ``send`` per step and ``poll`` for answers."""

    def __init__(self, channels: ChannelPool, address: str, peer: tensor_pb2.PeerInfo | None,
                 request_id: str, opening: denoiser_pb2.CfgPassOpen,
                 exporter: TensorExporter, importer: TensorImporter,
                 timeout: float | None, on_answer: Callable[[], None],
                 ring: bool = True) -> None:
        self.address = address
        self.peer = peer
        self.request_id = request_id
        self.exporter = exporter
        self.importer = importer
        self.on_answer = on_answer
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._answers: queue.Queue[torch.Tensor | Exception] = queue.Queue()
        self._closed = threading.Event()
        self._ring: RingStream | None = None
        offer = offer_ring(ring, peer, opening.peer, exporter.role)
        if offer is not None:
            opening.ring.CopyFrom(offer_message(offer))
        self._outbox.put(denoiser_pb2.CfgPassRequest(request_id=request_id, open=opening))
        stub = denoiser_pb2_grpc.DenoiserStub(channels.get(address))
        self._responses: Iterator[denoiser_pb2.CfgPassResponse] = stub.CfgPass(
            iter(self._outbox.get, None), timeout=timeout,
            metadata=(("x-request-id", request_id),))
        if offer is not None:
            try:
                answer = next(self._responses)
                self._ring = settle_offer(offer, answer.ring, f"CFG partner {address}",
                                          exporter.role)
            except grpc.RpcError as err:
                self.close()
                raise from_rpc_error(err, f"CFG partner {address}") from err
            except (StopIteration, TimeoutError):
                self.close()
                raise Unavailable(f"CFG partner {address}: no step ring after the open") from None
            finally:
                offer.close()
        self._reader = threading.Thread(
            target=self._read if self._ring is None else self._read_ring,
            name=f"cfg-{request_id}", daemon=True)
        self._reader.start()

    def send(self, step: int, sample: torch.Tensor, timestep: torch.Tensor,
             with_loras: bool) -> None:
        if self._ring is not None:
            try:
                self._ring.send({"step": step, "timestep": float(timestep),
                                 "with_loras": with_loras}, [sample])
            except RingClosed as closed:
                raise closed_ring_error(self._responses, closed,
                                        f"CFG partner {self.address}") from closed
            return
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

    def _read_ring(self) -> None:
        assert self._ring is not None
        try:
            while True:
                _, (noise,) = self._ring.receive()
                self._answers.put(noise)
                self.on_answer()
        except RingClosed as closed:
            if not self._closed.is_set():
                self._answers.put(closed_ring_error(self._responses, closed,
                                                    f"CFG partner {self.address}"))
        except Exception as exc:  # noqa: BLE001 - handed to the step loop
            self._answers.put(exc)
        self.on_answer()

    def close(self) -> None:
        self._closed.set()
        if self._ring is not None:
            self._ring.close()
        self._outbox.put(None)
        cancel = getattr(self._responses, "cancel", None)
        if cancel is not None:
            cancel()
