"""Server side of every RPC: its duration histogram and, with tracing on, its SERVER span.

The span continues the caller's trace from the W3C ``traceparent`` in the call's
metadata, and is the current span while the handler runs, so calls the handler makes
(through the channel pool) become its children.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from services.common.telemetry import tracing
from services.common.telemetry.metrics import RPC_SECONDS


def _status(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class _Observed:
    """One call's bookkeeping: the span (when tracing) and the timer."""

    def __init__(self, role: str, method: str, context: grpc.ServicerContext) -> None:
        self.role, self.method, self.context = role, method, context
        self.started = time.perf_counter()
        self.span: Any = None
        self.token: Any = None
        if tracing.enabled():
            self._start_span()

    def _start_span(self) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind

        carrier = {key: value for key, value in self.context.invocation_metadata()
                   if isinstance(value, str)}
        parent = propagate.extract(carrier)
        service, _, name = self.method.lstrip("/").partition("/")
        self.span = trace.get_tracer("dfleet").start_span(
            f"{service}/{name}", context=parent, kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name,
                        "dfleet.role": self.role})
        self.token = otel_context.attach(trace.set_span_in_context(self.span, parent))

    def end(self, failed: bool) -> None:
        code = _status(self.context, failed)
        RPC_SECONDS.labels(self.role, self.method, code.name).observe(
            time.perf_counter() - self.started)
        if self.span is not None:
            from opentelemetry import context as otel_context
            from opentelemetry.trace import Status, StatusCode

            if code != grpc.StatusCode.OK:
                self.span.set_status(Status(StatusCode.ERROR, code.name))
            self.span.end()
            otel_context.detach(self.token)


class ServerTelemetry(grpc.ServerInterceptor):
    """Times every RPC per role, method and status; traces it when tracing is on."""

    def __init__(self, role: str) -> None:
        self.role = role

    def intercept_service(self, continuation: Callable[..., Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        role = self.role

        def wrap_unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Any:
                observed = _Observed(role, method, context)
                failed = True
                try:
                    response = fn(request, context)
                    failed = False
                    return response
                finally:
                    observed.end(failed)
            return call

        def wrap_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                observed = _Observed(role, method, context)
                failed = True
                try:
                    yield from fn(request, context)
                    failed = False
                finally:
                    observed.end(failed)
            return call

        kinds = (("unary_unary", wrap_unary, grpc.unary_unary_rpc_method_handler),
                 ("unary_stream", wrap_stream, grpc.unary_stream_rpc_method_handler),
                 ("stream_unary", wrap_unary, grpc.stream_unary_rpc_method_handler),
                 ("stream_stream", wrap_stream, grpc.stream_stream_rpc_method_handler))
        for attribute, wrap, make in kinds:
            fn = getattr(handler, attribute)
            if fn is not None:
                return make(wrap(fn), handler.request_deserializer,
                            handler.response_serializer)
        return handler
