"""What ``generate`` and ``stream`` give back: typed events, results, request states.

Each converts from its proto; an ``error`` event becomes a raised
:class:`dfleet.FleetError` instead of an event.
"""

from __future__ import annotations

import enum
import io
from dataclasses import dataclass, field
from functools import cached_property

import grpc
import numpy as np
from PIL import Image

from dfleet.errors import FleetError, Internal, from_error_info
from diffusion.v1 import gateway_pb2, tensor_pb2

_NUMPY_DTYPES = {
    tensor_pb2.DTYPE_FLOAT32: np.float32, tensor_pb2.DTYPE_FLOAT16: np.float16,
    tensor_pb2.DTYPE_FLOAT64: np.float64, tensor_pb2.DTYPE_INT64: np.int64,
    tensor_pb2.DTYPE_INT32: np.int32, tensor_pb2.DTYPE_INT16: np.int16,
    tensor_pb2.DTYPE_INT8: np.int8, tensor_pb2.DTYPE_UINT8: np.uint8,
    tensor_pb2.DTYPE_BOOL: np.bool_,
}


def decode_tensor(ref: tensor_pb2.TensorRef) -> np.ndarray:
    """A numpy copy of an inline ``TensorRef`` (bfloat16 is widened to float32)."""
    if ref.WhichOneof("payload") != "inline":
        raise Internal(grpc.StatusCode.INTERNAL,
                       f"tensor payload {ref.WhichOneof('payload')!r} cannot reach a client")
    data = ref.inline
    shape = tuple(ref.shape)
    if ref.dtype == tensor_pb2.DTYPE_BFLOAT16:
        raw = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape)
    dtype = _NUMPY_DTYPES.get(ref.dtype)
    if dtype is None:
        raise Internal(grpc.StatusCode.INTERNAL, f"unknown tensor dtype {ref.dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def decode_image(data: bytes) -> Image.Image:
    """A loaded PIL image from encoded bytes."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@dataclass(frozen=True)
class Queued:
    """The fleet accepted the request; ``position`` requests wait ahead of it."""

    request_id: str
    position: int


@dataclass(frozen=True)
class Progress:
    """``step`` of ``total_steps`` denoising steps are done."""

    request_id: str
    step: int
    total_steps: int
    preview_png: bytes = b""

    @property
    def preview(self) -> Image.Image | None:
        return decode_image(self.preview_png) if self.preview_png else None


@dataclass(frozen=True)
class GeneratedImage:
    """One image of a result, drawn from ``seed``; ``pixels`` when asked for."""

    png: bytes
    seed: int
    pixels: np.ndarray | None = None
    output: str = "image"      # the workflow output it is

    @cached_property
    def image(self) -> Image.Image:
        return decode_image(self.png)


@dataclass(frozen=True)
class Result:
    """The finished images (``image`` and ``pixels`` are the first one's; ``images`` holds
    every one, in seed order); ``pixels`` is the float image when it was asked for."""

    request_id: str
    png: bytes
    pixels: np.ndarray | None
    metadata: dict[str, str] = field(default_factory=dict)
    latency_ms: float = 0.0
    images: tuple[GeneratedImage, ...] = ()

    @cached_property
    def image(self) -> Image.Image:
        return decode_image(self.png)


Event = Queued | Progress | Result


def result_from_proto(request_id: str, result: gateway_pb2.GenerateResult) -> Result:
    pixels = decode_tensor(result.pixels) if result.HasField("pixels") else None
    images = tuple(GeneratedImage(i.image.data, i.seed,
                                  decode_tensor(i.pixels) if i.HasField("pixels") else None,
                                  i.output or "image")
                   for i in result.images)
    return Result(request_id=request_id, png=result.image.data, pixels=pixels,
                  metadata=dict(result.metadata), latency_ms=result.latency_ms, images=images)


def event_from_proto(event: gateway_pb2.GenerateEvent) -> Event:
    """The typed event; raises the matching :class:`FleetError` for an ``error`` event."""
    kind = event.WhichOneof("event")
    if kind == "queued":
        return Queued(event.request_id, event.queued.position)
    if kind == "progress":
        p = event.progress
        return Progress(event.request_id, p.step, p.total_steps,
                        p.preview.data if p.HasField("preview") else b"")
    if kind == "result":
        return result_from_proto(event.request_id, event.result)
    if kind == "error":
        raise from_error_info(event.error, event.request_id)
    raise Internal(grpc.StatusCode.INTERNAL, f"unknown event {kind!r}", request_id=event.request_id)


class RequestState(enum.Enum):
    UNSPECIFIED = gateway_pb2.REQUEST_STATE_UNSPECIFIED
    QUEUED = gateway_pb2.REQUEST_STATE_QUEUED
    RUNNING = gateway_pb2.REQUEST_STATE_RUNNING
    SUCCEEDED = gateway_pb2.REQUEST_STATE_SUCCEEDED
    FAILED = gateway_pb2.REQUEST_STATE_FAILED
    CANCELLED = gateway_pb2.REQUEST_STATE_CANCELLED


@dataclass(frozen=True)
class RequestStatus:
    """What ``GetRequest`` knows about a request."""

    request_id: str
    state: RequestState
    step: int
    total_steps: int
    result: Result | None = None
    error: FleetError | None = None


def status_from_proto(response: gateway_pb2.GetRequestResponse) -> RequestStatus:
    rid = response.request_id
    return RequestStatus(
        request_id=rid, state=RequestState(response.state), step=response.step,
        total_steps=response.total_steps,
        result=result_from_proto(rid, response.result) if response.HasField("result") else None,
        error=from_error_info(response.error, rid) if response.HasField("error") else None,
    )


@dataclass(frozen=True)
class ModelInfo:
    """A model, ControlNet, LoRA or IP-Adapter the fleet serves; ``kind`` says which. Base and
    inpainting models give their family, the add-ons they take, the schedulers a request may
    name and their own. A folder the fleet cannot serve has kind "unavailable" and a reason."""

    name: str
    kind: str
    default_width: int
    default_height: int
    schedulers: tuple[str, ...] = ()
    default_scheduler: str = ""
    family: str = ""
    addons: tuple[str, ...] = ()
    reason: str = ""           # kind "unavailable": why the fleet cannot serve it


def models_from_proto(response: gateway_pb2.ListModelsResponse) -> list[ModelInfo]:
    return [ModelInfo(m.name, m.kind, m.default_width, m.default_height, tuple(m.schedulers),
                      m.default_scheduler, m.family, tuple(m.addons), m.reason)
            for m in response.models]


@dataclass(frozen=True)
class Template:
    """A registered image template for masked edits."""

    template_id: str
    cache_bytes: int
