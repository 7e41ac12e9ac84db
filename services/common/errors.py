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

from services.common.transport.errors import TransportError

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


class PermissionDenied(FleetError):
    code = grpc.StatusCode.PERMISSION_DENIED


def from_rpc_error(err: grpc.RpcError, peer: str) -> FleetError:
    """A downstream call's failure, as a domain error that keeps its code."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    detail = err.details() if hasattr(err, "details") else str(err)
    for cls in (InvalidArgument, NotFound, ResourceExhausted, Unavailable, DeadlineExceeded,
                Cancelled, FailedPrecondition, PermissionDenied):
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
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):   # a peer's failure
        return from_rpc_error(exc, "peer")
    if isinstance(exc, TransportError):   # a caller's TensorRef that cannot be read
        return InvalidArgument(f"cannot read a tensor of the request: {exc}")
    return None


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    mapped = as_fleet_error(exc)
    if mapped is None:
        log.exception("unhandled error in %s", method)
    # The traceback holds the failed call's frames, and with them its request (perhaps tens
    # of MB) in a reference cycle only the garbage collector would break: drop it now.
    exc.__traceback__ = None
    if mapped is not None:
        if mapped.field:
            context.set_trailing_metadata((("dfleet-field", mapped.field),))
        context.abort(mapped.code, str(mapped))
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


class _Undecodable:
    """A request message that did not parse; its handler answers INVALID_ARGUMENT (gRPC
    itself would answer INTERNAL for a deserializer's exception)."""

    def __init__(self, error: Exception) -> None:
        self.error = f"{type(error).__name__}: {error}"


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bytes
            return _Undecodable(exc)
    return parse


def _decoded(message: Any) -> Any:
    if isinstance(message, _Undecodable):
        raise InvalidArgument(f"cannot decode the request message: {message.error}")
    return message


def _decoded_stream(messages: Iterator[Any]) -> Iterator[Any]:
    for message in messages:
        yield _decoded(message)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps :class:`FleetError` to its status; anything else to INTERNAL. A request that
    does not decode is INVALID_ARGUMENT."""

    def intercept_service(self, continuation: Callable[..., Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def decode(request: Any, streaming: bool) -> Any:
            return _decoded_stream(request) if streaming else _decoded(request)

        def wrap_unary(fn: Callable[..., Any], streaming: bool = False) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return fn(decode(request, streaming), context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status
                    if isinstance(exc, grpc.RpcError) and context.code() is not None:
                        raise
                    _abort(context, exc, method)
            return call

        def wrap_stream(fn: Callable[..., Any], streaming: bool = False) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from fn(decode(request, streaming), context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status
                    if isinstance(exc, grpc.RpcError) and context.code() is not None:
                        raise
                    _abort(context, exc, method)
            return call

        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary), parse, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream), parse, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary, streaming=True), parse,
                handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(handler.stream_stream, streaming=True), parse,
            handler.response_serializer)
