"""The monolithic baseline: the fleet's Gateway API served by whole diffusers pipelines.

Each worker process holds every pipeline of the model tree and serves requests
first come first served from one queue, loading a request's LoRAs when it
arrives. ``--workers`` and ``--threads`` (torch threads per worker) let a
benchmark give it the same CPU budget as the fleet.

    python -m bench.baseline_server --models-dir models --port 50061 --workers 2 --threads 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import grpc

from bench.baseline_catalog import ModelCatalog, scan_catalog
from bench.baseline_pool import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, WorkerPool
from bench.baseline_requests import Output, RequestError, _image_size, validate
from diffusion.v1 import gateway_pb2, gateway_pb2_grpc, tensor_pb2

log = logging.getLogger("baseline")

FIELD_METADATA_KEY = "dfleet-field"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_DISCONNECTED = ("disconnected", None)
_STATES = {QUEUED: gateway_pb2.REQUEST_STATE_QUEUED, RUNNING: gateway_pb2.REQUEST_STATE_RUNNING,
           SUCCEEDED: gateway_pb2.REQUEST_STATE_SUCCEEDED,
           FAILED: gateway_pb2.REQUEST_STATE_FAILED,
           CANCELLED: gateway_pb2.REQUEST_STATE_CANCELLED}


@dataclass(frozen=True)
class BaselineSettings:
    models_dir: str
    host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port; the bound address goes to stdout and --ready-file
    workers: int = 1  # worker processes, each with every pipeline resident
    threads: int = 1  # torch threads per worker
    lora_cache: int = 0  # LoRAs each worker keeps loaded per model (LRU); 0 = per request
    max_streams: int = 256  # concurrent RPCs the server's thread pool serves
    ready_file: str = ""  # JSON {"address": ...} written once every worker has loaded


def error_info(error: tuple[str, str, str]) -> gateway_pb2.ErrorInfo:
    code, message, field = error
    return gateway_pb2.ErrorInfo(code=grpc.StatusCode[code].value[0], message=message, field=field)


def result_proto(output: Output, latency_ms: float) -> gateway_pb2.GenerateResult:
    result = gateway_pb2.GenerateResult(image=gateway_pb2.ImageInput(data=output.png),
                                        metadata=output.metadata, latency_ms=latency_ms)
    if output.pixels is not None:
        result.pixels.CopyFrom(tensor_pb2.TensorRef(dtype=tensor_pb2.DTYPE_FLOAT32,
                                                    shape=list(output.shape),
                                                    inline=output.pixels))
    return result


class BaselineGateway(gateway_pb2_grpc.GatewayServicer):
    """Converts protos to jobs and pool events back to protos; the pool does the work."""

    def __init__(self, catalog: ModelCatalog, pool: WorkerPool) -> None:
        self.catalog = catalog
        self.pool = pool
        self.templates: dict[str, bytes] = {}

    def Generate(self, request: gateway_pb2.GenerateRequest,
                 context: grpc.ServicerContext) -> Iterator[gateway_pb2.GenerateEvent]:
        received = time.time()
        remaining = context.time_remaining()
        deadline = received + remaining if remaining is not None else None
        try:
            job = validate(request, self.catalog, self.templates, received, deadline)
            entry, position = self.pool.submit(job)
        except RequestError as error:
            _abort(context, error)
        rid = entry.job.request_id
        context.add_callback(lambda: entry.events.put(_DISCONNECTED))
        yield gateway_pb2.GenerateEvent(request_id=rid,
                                        queued=gateway_pb2.Queued(position=position))
        while True:
            kind, payload = entry.events.get()
            if kind == "disconnected":
                self.pool.cancel(rid)
                return
            if kind == "progress":
                step, total, preview = payload
                progress = gateway_pb2.Progress(step=step, total_steps=total)
                if preview:
                    progress.preview.data = preview
                yield gateway_pb2.GenerateEvent(request_id=rid, progress=progress)
            elif kind == "result":
                latency_ms = (entry.finished - received) * 1000
                yield gateway_pb2.GenerateEvent(request_id=rid,
                                                result=result_proto(payload, latency_ms))
                return
            elif kind == "error":
                yield gateway_pb2.GenerateEvent(request_id=rid, error=error_info(payload))
                return

    def Cancel(self, request: gateway_pb2.CancelRequest,
               context: grpc.ServicerContext) -> gateway_pb2.CancelResponse:
        return gateway_pb2.CancelResponse(cancelled=self.pool.cancel(request.request_id))

    def GetRequest(self, request: gateway_pb2.GetRequestRequest,
                   context: grpc.ServicerContext) -> gateway_pb2.GetRequestResponse:
        entry = self.pool.get(request.request_id)
        if entry is None:
            _abort(context, RequestError("NOT_FOUND", f"unknown request {request.request_id!r}",
                                         "request_id"))
        response = gateway_pb2.GetRequestResponse(
            request_id=request.request_id, state=_STATES[entry.state], step=entry.step,
            total_steps=entry.total_steps)
        if entry.result is not None:
            latency_ms = (entry.finished - entry.job.received) * 1000
            response.result.CopyFrom(result_proto(entry.result, latency_ms))
        if entry.error is not None:
            response.error.CopyFrom(error_info(entry.error))
        return response

    def ListModels(self, request: gateway_pb2.ListModelsRequest,
                   context: grpc.ServicerContext) -> gateway_pb2.ListModelsResponse:
        models = [gateway_pb2.ModelInfo(name=m.name, kind=m.kind, default_width=m.default_size,
                                        default_height=m.default_size)
                  for m in self.catalog.models.values()]
        models += [gateway_pb2.ModelInfo(name=n, kind="controlnet")
                   for n in self.catalog.controlnets]
        models += [gateway_pb2.ModelInfo(name=n, kind="lora") for n in self.catalog.loras]
        return gateway_pb2.ListModelsResponse(models=models)

    def RegisterTemplate(self, request: gateway_pb2.RegisterTemplateRequest,
                         context: grpc.ServicerContext) -> gateway_pb2.RegisterTemplateResponse:
        """Keeps the image only: the baseline has no activation cache to fill."""
        try:
            if request.model and request.model not in self.catalog.models:
                raise RequestError("NOT_FOUND", f"unknown model {request.model!r}", "model")
            _image_size(request.image.data, "image")
        except RequestError as error:
            _abort(context, error)
        template_id = "tpl-" + hashlib.sha256(request.image.data).hexdigest()[:16]
        self.templates[template_id] = request.image.data
        return gateway_pb2.RegisterTemplateResponse(template_id=template_id, cache_bytes=0)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname,
                 "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _abort(context: grpc.ServicerContext, error: RequestError) -> NoReturn:
    if error.field:
        context.set_trailing_metadata(((FIELD_METADATA_KEY, error.field),))
    message = f"{error.field}: {error.message}" if error.field else error.message
    context.abort(grpc.StatusCode[error.code], message)
    raise AssertionError("context.abort returns only by raising")


def serve(settings: BaselineSettings, stop: threading.Event) -> None:
    """Runs until ``stop`` is set."""
    catalog = scan_catalog(settings.models_dir)
    pool = WorkerPool(settings.models_dir, settings.workers, settings.threads,
                      lora_cache=settings.lora_cache)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.max_streams),
                         options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    gateway_pb2_grpc.add_GatewayServicer_to_server(BaselineGateway(catalog, pool), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    pool.start()
    server.start()
    ready = {"address": f"{settings.host}:{port}", "pid": os.getpid(),
             "workers": settings.workers, "threads": settings.threads,
             "lora_cache": settings.lora_cache}
    if settings.ready_file:
        tmp = Path(settings.ready_file + ".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.rename(settings.ready_file)
    print(json.dumps({"event": "ready", **ready}), flush=True)
    stop.wait()
    server.stop(grace=1.0).wait()
    pool.stop()


def parse_settings(argv: list[str] | None = None) -> BaselineSettings:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", required=True,
                        help="model tree (see services.common.tiny_model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--lora-cache", type=int, default=0,
                        help="LoRAs each worker keeps loaded per model, least recently used "
                             "out; 0 = load a request's LoRAs for it and unload them after")
    parser.add_argument("--max-streams", type=int, default=256)
    parser.add_argument("--ready-file", default="")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        parser.error("--workers and --threads must be at least 1")
    if args.lora_cache < 0:
        parser.error("--lora-cache must be >= 0")
    if not Path(args.models_dir).is_dir():
        parser.error(f"--models-dir {args.models_dir} is not a folder")
    return BaselineSettings(**vars(args))


def main(argv: list[str] | None = None) -> int:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    settings = parse_settings(argv)
    log.info("settings %s", json.dumps(settings.__dict__))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve(settings, stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
