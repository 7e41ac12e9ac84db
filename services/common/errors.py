"""Domain errors and the one interceptor that turns them into gRPC status codes.

Engines raise these (they know nothing about gRPC); servicers let them pass;
:class:`ErrorInterceptor` maps them. Anything else becomes INTERNAL and is
logged with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import redis

log = logging.getLogger("dfleet.errors")


class FleetError(Exception):
    """Base of every error with a meaning for the caller."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(FleetError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(FleetError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(FleetError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FleetError):
    """Retryable: a peer or dependency is briefly gone."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(FleetError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(FleetError):
    code = grpc.StatusCode.CANCELLED


class FailedPrecondition(FleetError):
    code = grpc.StatusCode.FAILED_PRECONDITION


def from_rpc_error(err: grpc.RpcError, peer: str) -> FleetError:
    """A downstream call's failure, as a domain error that keeps its code."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    detail = err.details() if hasattr(err, "details") else str(err)
    for cls in (InvalidArgument, NotFound, ResourceExhausted, Unavailable, DeadlineExceeded,
                Cancelled, FailedPrecondition):
        if cls.code == code:
            return cls(f"{peer}: {detail}")
    error = FleetError(f"{peer}: {code.name if code else 'UNKNOWN'}: {detail}")
    return error


def as_fleet_error(exc: BaseException) -> FleetError | None:
    """``exc`` as a domain error when it has a meaning for the caller, else None."""
    if isinstance(exc, FleetError):
        return exc
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return Unavailable(f"the fleet's Redis is unreachable: {exc}")
    return None


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    exc = as_fleet_error(exc) or exc
    if isinstance(exc, FleetError):
        if exc.field:
            context.set_trailing_metadata((("dfleet-field", exc.field),))
        context.abort(exc.code, str(exc))
    log.exception("unhandled error in %s", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps :class:`FleetError` to its status; anything else to INTERNAL."""

    def intercept_service(self, continuation: Callable[..., Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return fn(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status
                    if isinstance(exc, grpc.RpcError) and context.code() is not None:
                        raise
                    _abort(context, exc, method)
            return call

        def wrap_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from fn(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status
                    if isinstance(exc, grpc.RpcError) and context.code() is not None:
                        raise
                    _abort(context, exc, method)
            return call

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary), handler.request_deserializer,
                handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary), handler.request_deserializer,
                handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(handler.stream_stream), handler.request_deserializer,
            handler.response_serializer)
