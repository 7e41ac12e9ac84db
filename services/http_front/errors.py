"""Errors as JSON: the gRPC status name, the message, the offending field (the gateway's
own field names), with the HTTP status mapped from the gRPC code. The ``type`` and
``param`` keys are what OpenAI's clients read from an error body."""

from __future__ import annotations

from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from dfleet.errors import FleetError

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_TYPES = {400: "invalid_request_error", 404: "not_found_error", 409: "conflict_error",
          429: "rate_limit_error", 401: "authentication_error", 403: "permission_error"}


def error_body(code: grpc.StatusCode, message: str, field: str = "",
               request_id: str = "") -> tuple[int, dict[str, Any]]:
    status = HTTP_STATUS.get(code, 500)
    body: dict[str, Any] = {"code": code.name, "message": message,
                            "type": _TYPES.get(status, "server_error")}
    if field:
        body["field"] = body["param"] = field
    if request_id:
        body["request_id"] = request_id
    return status, {"error": body}


def fleet_error_response(error: FleetError) -> JSONResponse:
    status, body = error_body(error.code, error.message, error.field, error.request_id)
    return JSONResponse(body, status_code=status)


def field_path(location: tuple[Any, ...]) -> str:
    """pydantic's ("body", "controlnets", 0, "scale") -> "controlnets[0].scale"."""
    path = ""
    for part in location[1:] if location and location[0] == "body" else location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


async def on_fleet_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, FleetError)
    return fleet_error_response(error)


async def on_validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0]
    field = field_path(tuple(first.get("loc", ())))
    message = f"{field}: {first.get('msg', 'invalid')}" if field else first.get("msg", "")
    status, body = error_body(grpc.StatusCode.INVALID_ARGUMENT, message, field)
    return JSONResponse(body, status_code=status)
