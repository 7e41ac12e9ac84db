"""The public Gateway API: validates, records, runs and reports requests."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from diffusion.v1 import gateway_pb2, gateway_pb2_grpc, tensor_pb2
from services.common.deadlines import deadline_of, seconds_from_now
from services.common.errors import (
    FailedPrecondition,
    FleetError,
    NotFound,
    ResourceExhausted,
    as_fleet_error,
)
from services.common.model_store import ModelEntry, ModelStore
from services.common.server import ServiceRuntime
from services.common.telemetry.metrics import RequestTimer
from services.common.telemetry.tracing import in_this_context
from services.gateway.attachments import AttachmentKinds
from services.gateway.depth import DepthTracker
from services.gateway.generation import Generation
from services.gateway.request_flow import Outcome, RequestFlow
from services.gateway.request_log import RequestLog
from services.gateway.settings import GatewaySettings
from services.gateway.template_registration import TemplateRegistrar
from services.gateway.workflow_rpcs import WorkflowRpcs
from services.gateway.workflows.service import Workflows

log = logging.getLogger("dfleet.gateway")
POLL_S = 0.25
LOW_PRIORITY_SHARE = 0.5   # requests below priority 0 may fill this share of max_inflight
_DONE = object()


class AlreadyExists(FleetError):
    code = grpc.StatusCode.ALREADY_EXISTS


def error_info(exc: BaseException) -> gateway_pb2.ErrorInfo:
    exc = as_fleet_error(exc) or exc
    if isinstance(exc, FleetError):
        return gateway_pb2.ErrorInfo(code=exc.code.value[0], message=exc.message,
                                     field=exc.field)
    return gateway_pb2.ErrorInfo(code=grpc.StatusCode.INTERNAL.value[0],
                                 message=f"internal error: {type(exc).__name__}: {exc}")


class ProgressWrites:
    """When a running request's step is worth writing to Redis: at most once per
    ``interval_s``, and always the last step (GetRequest reads it; every step would be a
    Redis write per request per step)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: float | None = None

    def due(self, step: int, total: int, now: float) -> bool:
        if step < total and self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        return True


class GatewayServicer(WorkflowRpcs, gateway_pb2_grpc.GatewayServicer):
    def __init__(self, settings: GatewaySettings, store: ModelStore, requests: RequestLog,
                 flow: RequestFlow, attachments: AttachmentKinds, runtime: ServiceRuntime,
                 registrar: TemplateRegistrar | None = None,
                 workflows: Workflows | None = None) -> None:
        self.settings = settings
        self.workflows = workflows
        self.registrar = registrar
        self.store = store
        self.requests = requests
        self.flow = flow
        self.attachments = attachments
        self.runtime = runtime
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def inflight(self) -> int:
        with self._lock:
            return len(self._cancel)

    # Generate
    def Generate(self, request: gateway_pb2.GenerateRequest,
                 context: grpc.ServicerContext) -> Iterator[gateway_pb2.GenerateEvent]:
        request = self._expanded(request)
        flow = self._validate(request)
        cancel = self._admit(flow.request_id, flow.priority)
        events: queue.Queue[object] = queue.Queue()
        try:
            recorded = gateway_pb2.GenerateRequest()
            recorded.CopyFrom(request)
            recorded.request_id = flow.request_id
            entry = self.requests.record(flow.request_id, recorded)
        except BaseException:
            self._leave(flow.request_id)
            raise
        context.add_callback(cancel.set)
        deadline = deadline_of(context, self.settings.max_request_s)
        events.put(gateway_pb2.GenerateEvent(
            request_id=flow.request_id, queued=gateway_pb2.Queued(position=self.inflight() - 1)))
        threading.Thread(target=in_this_context(self._execute), daemon=True,
                         name=f"request-{flow.request_id}",
                         args=(flow, self.requests.stream, entry, events.put, deadline,
                               cancel)).start()
        while True:
            try:
                item = events.get(timeout=POLL_S)
            except queue.Empty:
                if not context.is_active():
                    cancel.set()
                continue
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def _admit(self, request_id: str, priority: int = 0) -> threading.Event:
        """Room for one more request; below priority 0 only within LOW_PRIORITY_SHARE of the
        gateway, so a backlog of background work leaves room for the rest."""
        limit = self.settings.max_inflight
        if priority < 0:
            limit = max(1, int(limit * LOW_PRIORITY_SHARE))
        with self._lock:
            if len(self._cancel) >= limit:
                raise ResourceExhausted(
                    f"{len(self._cancel)} requests in flight, the limit is {limit}"
                    f"{' for priority below 0' if priority < 0 else ''}; retry later")
            if request_id in self._cancel:
                raise AlreadyExists(f"request {request_id!r} is already running",
                                    field="request_id")
            event = threading.Event()
            self._cancel[request_id] = event
            return event

    def _leave(self, request_id: str) -> None:
        with self._lock:
            self._cancel.pop(request_id, None)

    def _validate(self, request: gateway_pb2.GenerateRequest) -> Generation:
        if self.workflows is None:
            raise FailedPrecondition("this gateway serves no workflows", field="workflow_id")
        return self.workflows.generation(request)

    def _execute(self, flow: Generation, stream: str, entry: str, emit: Callable[[object], None],
                 deadline: float | None, cancel: threading.Event) -> None:
        """Runs a recorded request to a terminal state; every outcome is recorded and acked."""
        rid = flow.request_id
        depth = DepthTracker(self.requests.fleet)
        started = time.monotonic()
        timer = RequestTimer(flow.model, flow.kind)
        try:
            self.requests.set_state(rid, gateway_pb2.REQUEST_STATE_RUNNING, total=flow.steps)

            writes = ProgressWrites(self.settings.progress_write_s)

            def forward(event: gateway_pb2.GenerateEvent) -> None:
                if event.HasField("progress"):
                    timer.step()
                    step, total = event.progress.step, event.progress.total_steps
                    if writes.due(step, total, time.monotonic()):
                        self.requests.set_state(rid, gateway_pb2.REQUEST_STATE_RUNNING,
                                                step, total)
                emit(event)

            outcome = self.flow.run(flow, forward, deadline, cancel.is_set, depth)
            self.requests.finish(rid, entry, stream, gateway_pb2.REQUEST_STATE_SUCCEEDED,
                                 png=outcome.pngs[0], metadata=json.dumps(outcome.metadata))
            emit(gateway_pb2.GenerateEvent(request_id=rid, result=self._result(
                flow, outcome, (time.monotonic() - started) * 1e3)))
            timer.done()
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a terminal state
            info = error_info(exc)
            timer.done(info.code)
            state = (gateway_pb2.REQUEST_STATE_CANCELLED
                     if info.code == grpc.StatusCode.CANCELLED.value[0]
                     else gateway_pb2.REQUEST_STATE_FAILED)
            if not isinstance(exc, FleetError):
                log.exception("request failed", extra={"request_id": rid})
            try:
                self.requests.finish(rid, entry, stream, state, error=info)
            except Exception:  # noqa: BLE001 - the entry stays pending and is recovered
                log.exception("could not record the end of a request", extra={"request_id": rid})
            emit(gateway_pb2.GenerateEvent(request_id=rid, error=info))
            emit(exc)
        finally:
            depth.close()
            self._leave(rid)
            emit(_DONE)

    def _result(self, flow: Generation, outcome: Outcome,
                latency_ms: float) -> gateway_pb2.GenerateResult:
        images = []
        for i, (png, pixels) in enumerate(zip(outcome.pngs, outcome.pixels, strict=True)):
            image = gateway_pb2.GeneratedImage(image=gateway_pb2.ImageInput(data=png),
                                               seed=flow.seed + i % flow.num_images,
                                               output=outcome.outputs[i])
            if flow.return_pixels:
                image.pixels.CopyFrom(tensor_pb2.TensorRef(
                    dtype=tensor_pb2.DTYPE_FLOAT32, shape=list(pixels.shape),
                    inline=pixels.astype("float32").tobytes()))
            images.append(image)
        return gateway_pb2.GenerateResult(
            image=images[0].image, pixels=images[0].pixels if flow.return_pixels else None,
            images=images, metadata=outcome.metadata, latency_ms=latency_ms)

    # the other calls
    def Cancel(self, request: gateway_pb2.CancelRequest,
               context: grpc.ServicerContext) -> gateway_pb2.CancelResponse:
        with self._lock:
            event = self._cancel.get(request.request_id)
        if event is not None:
            event.set()
        return gateway_pb2.CancelResponse(cancelled=event is not None)

    def GetRequest(self, request: gateway_pb2.GetRequestRequest,
                   context: grpc.ServicerContext) -> gateway_pb2.GetRequestResponse:
        fields, png = self.requests.status(request.request_id)
        if not fields:
            raise NotFound(f"no request {request.request_id!r}", field="request_id")
        response = gateway_pb2.GetRequestResponse(
            request_id=request.request_id, state=int(fields["state"]),
            step=int(fields.get("step", 0)), total_steps=int(fields.get("total", 0)))
        if "error_code" in fields:
            response.error.CopyFrom(gateway_pb2.ErrorInfo(
                code=int(fields["error_code"]), message=fields.get("error_message", ""),
                field=fields.get("error_field", "")))
        if png is not None:
            response.result.image.data = png
            response.result.metadata.update(json.loads(fields.get("metadata") or "{}"))
        return response

    def ListModels(self, request: gateway_pb2.ListModelsRequest,
                   context: grpc.ServicerContext) -> gateway_pb2.ListModelsResponse:
        reasons = self.store.skipped()      # refused LoRA files are among its entries
        skipped = [gateway_pb2.ModelInfo(name=name, kind="unavailable", reason=reason)
                   for name, reason in sorted(reasons.items())]
        return gateway_pb2.ListModelsResponse(
            models=[self._model_info(e) for e in self.store.entries()
                    if e.name not in reasons] + skipped)

    def _model_info(self, entry: ModelEntry) -> gateway_pb2.ModelInfo:
        info = gateway_pb2.ModelInfo(name=entry.name, kind=entry.kind,
                                     default_width=entry.default_size,
                                     default_height=entry.default_size)
        if entry.kind in ("base", "inpainting"):
            family = self.store.family(entry.name)
            info.family = family.name
            info.addons.extend(sorted(family.addons))
            info.schedulers.extend(family.schedulers)
            info.default_scheduler = self.store.scheduler_config(entry.name)["_class_name"]
        return info

    def RegisterTemplate(self, request: gateway_pb2.RegisterTemplateRequest,
                         context: grpc.ServicerContext) -> gateway_pb2.RegisterTemplateResponse:
        if self.registrar is None:
            raise FailedPrecondition("this gateway serves no templates", field="template_id")
        return self.registrar.register(request)

    def _expanded(self, request: gateway_pb2.GenerateRequest) -> gateway_pb2.GenerateRequest:
        """An edit of a template as the inpainting request it is (recorded as such)."""
        if not request.template_id:
            return request
        if self.registrar is None:
            raise FailedPrecondition("this gateway serves no templates", field="template_id")
        return self.registrar.expand(request)

    def recover(self, request: gateway_pb2.GenerateRequest, stream: str, entry: str) -> None:
        """Runs an orphaned request (its gateway died) to a terminal state, for GetRequest."""
        try:
            flow = self._validate(request)
            cancel = self._admit(flow.request_id, flow.priority)
        except FleetError as exc:
            self.requests.finish(request.request_id, entry, stream,
                                 gateway_pb2.REQUEST_STATE_FAILED, error=error_info(exc))
            return
        log.info("recovering an orphaned request", extra={"request_id": flow.request_id})
        threading.Thread(target=self._execute, daemon=True, name=f"recover-{flow.request_id}",
                         args=(flow, stream, entry, lambda _e: None,
                               seconds_from_now(self.settings.max_request_s), cancel)).start()
