"""The HTTP routes: JSON in, the gateway called through the SDK, JSON (or server-sent
events) out. Nothing here knows gRPC beyond the SDK's typed errors.

    POST /v1/images/generations          OpenAI images API (b64_json)
    POST /v1/generations                 the full request; ?stream=true (or Accept:
                                         text/event-stream): queued, progress per step,
                                         result or error as server-sent events
    GET  /v1/generations/{request_id}    state (and result while the gateway keeps it)
    POST /v1/generations/{request_id}/cancel
    GET  /v1/models                      what the fleet serves
    GET  /v1/queue-depth/{role:model}    queue depth of a model node (with Redis; for KEDA)
    GET  /healthz, GET /metrics, GET /openapi.json, GET /docs
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from prometheus_client import make_asgi_app

import dfleet
from services.http_front.errors import error_body, on_fleet_error, on_validation_error
from services.http_front.schemas import (
    GenerateBody,
    OpenAIImagesBody,
    generate_params,
    openai_params,
    result_json,
)


def build_app(client: Callable[[], dfleet.Client],
              depth: Callable[[str], int] | None = None) -> FastAPI:
    """The ASGI app; ``client`` gives the SDK client of a live gateway, ``depth`` the queue
    depth of a ``role:model`` node (None: no Redis, no depth route)."""
    app = FastAPI(title="diffusion-fleet HTTP API", version="1",
                  description="Text-to-image workflows of a diffusion fleet over HTTP/JSON.")
    app.add_exception_handler(dfleet.FleetError, on_fleet_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.mount("/metrics", make_asgi_app())

    @app.get("/healthz", summary="liveness of the front")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/images/generations", summary="OpenAI-compatible image generation")
    def openai_images(body: OpenAIImagesBody) -> dict[str, Any]:
        result = client().generate(body.prompt, **openai_params(body))
        images = result.images or (dfleet.GeneratedImage(result.png, 0),)
        return {"created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(i.png).decode()} for i in images]}

    @app.post("/v1/generations", summary="generate; ?stream=true streams server-sent events")
    def generate(body: GenerateBody, request: Request, stream: bool = False) -> Any:
        prompt, params = generate_params(body)
        if stream or "text/event-stream" in request.headers.get("accept", ""):
            return StreamingResponse(_events(client(), prompt, params),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return result_json(client().generate(prompt, **params))

    @app.get("/v1/generations/{request_id}", summary="state and result of a request")
    def lookup(request_id: str) -> dict[str, Any]:
        status = client().get(request_id)
        found: dict[str, Any] = {"request_id": status.request_id,
                                 "state": status.state.name.lower(), "step": status.step,
                                 "total_steps": status.total_steps}
        if status.result is not None:
            found["result"] = result_json(status.result)
        if status.error is not None:
            found["error"] = error_body(status.error.code, status.error.message,
                                        status.error.field, request_id)[1]["error"]
        return found

    @app.post("/v1/generations/{request_id}/cancel", summary="stop a running request")
    def cancel(request_id: str) -> dict[str, Any]:
        return {"request_id": request_id, "cancelled": client().cancel(request_id)}

    if depth is not None:
        @app.get("/v1/queue-depth/{node}", summary="queue depth of a model node (role:model), "
                 "as the controller reads it; KEDA's metrics-api trigger polls it")
        def queue_depth(node: str) -> dict[str, Any]:
            if node.count(":") != 1 or not all(node.split(":")):
                raise dfleet.InvalidArgument(message=f"node: {node!r} is not role:model",
                                             field="node")
            return {"node": node, "depth": depth(node)}

    @app.get("/v1/models", summary="models, ControlNets and LoRAs the fleet serves")
    def models() -> dict[str, Any]:
        return {"models": [{"name": m.name, "kind": m.kind, "default_width": m.default_width,
                            "default_height": m.default_height,
                            "schedulers": list(m.schedulers)} for m in client().models()]}

    return app


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _events(client: dfleet.Client, prompt: str, params: dfleet.GenerateParams
            ) -> Iterator[bytes]:
    """The request's life as server-sent events; a client that leaves cancels it."""
    try:
        for event in client.stream(prompt, **params):
            if isinstance(event, dfleet.Queued):
                yield _sse("queued", {"request_id": event.request_id,
                                      "position": event.position})
            elif isinstance(event, dfleet.Progress):
                yield _sse("progress", {"request_id": event.request_id, "step": event.step,
                                        "total_steps": event.total_steps})
            elif isinstance(event, dfleet.Result):
                yield _sse("result", result_json(event))
    except dfleet.FleetError as error:
        yield _sse("error", error_body(error.code, error.message, error.field,
                                       error.request_id)[1]["error"])

