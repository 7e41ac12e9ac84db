"""W3C trace context on outgoing gRPC calls: a client span per call, its ``traceparent``
in the call's metadata.

Used by the SDK's channels and by every service's channel pool. OpenTelemetry is
optional for the SDK: without ``opentelemetry-api`` installed, channels are left as
they are. With it, each call becomes a CLIENT span under whatever span is current, so a
caller that runs inside a trace continues it and one that configured a tracer provider
starts one; with no provider configured the spans are OpenTelemetry's no-op spans.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import grpc

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the SDK installed alone: no tracing
    trace = None  # type: ignore[assignment]

TRACER_NAME = "dfleet"


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


def _method_parts(method: str | bytes) -> tuple[str, str]:
    if isinstance(method, bytes):  # grpc.aio gives the method as bytes
        method = method.decode()
    service, _, name = method.lstrip("/").partition("/")
    return service, name


def start_client_span(method: str | bytes, target: str) -> Any:
    """A CLIENT span for one call to ``target``, child of the current span."""
    service, name = _method_parts(method)
    return trace.get_tracer(TRACER_NAME).start_span(
        f"{service}/{name}", kind=SpanKind.CLIENT,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name,
                    "server.address": target})


def end_span(span: Any, call: Any) -> None:
    """Ends ``span`` with the call's status (callback of a finished call)."""
    try:
        code = call.code()
    except Exception:  # noqa: BLE001 - a call cancelled before it started has no code
        code = grpc.StatusCode.CANCELLED
    if code is not None and code != grpc.StatusCode.OK:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


class TraceClientInterceptor(grpc.UnaryUnaryClientInterceptor,
                             grpc.UnaryStreamClientInterceptor,
                             grpc.StreamUnaryClientInterceptor,
                             grpc.StreamStreamClientInterceptor):
    """Starts a CLIENT span per call and sends its context as ``traceparent`` metadata."""

    def __init__(self, target: str) -> None:
        self.target = target

    def _intercept(self, continuation: Callable[..., Any], details: Any,
                   request: Any) -> Any:
        span = start_client_span(details.method, self.target)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata = list(details.metadata or ()) + list(carrier.items())
        details = _CallDetails(details.method, details.timeout, metadata,
                               details.credentials, getattr(details, "wait_for_ready", None),
                               getattr(details, "compression", None))
        try:
            call = continuation(details, request)
        except BaseException:
            span.end()
            raise
        call.add_done_callback(lambda done: end_span(span, done))
        return call

    intercept_unary_unary = _intercept
    intercept_unary_stream = _intercept
    intercept_stream_unary = _intercept
    intercept_stream_stream = _intercept


def traced_channel(channel: grpc.Channel, target: str) -> grpc.Channel:
    """``channel`` with trace context on every call (unchanged without OpenTelemetry)."""
    if trace is None:
        return channel
    return grpc.intercept_channel(channel, TraceClientInterceptor(target))


_providers: list[Any] = []


def tracing_wanted(env: Mapping[str, str] = os.environ) -> bool:
    """On when ``OTEL_TRACES_EXPORTER`` names an exporter or an OTLP endpoint is set,
    unless ``OTEL_SDK_DISABLED=true``."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: this fleet exports otlp or console")
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )
        return HttpSpanExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: this fleet speaks grpc or "
                     "http/protobuf")


def configure_from_env(service_name: str, attributes: Mapping[str, str] | None = None) -> bool:
    """Installs a tracer provider exporting as the ``OTEL_*`` variables say; True when on.

    Spans go through a batch processor to the OTLP exporter of
    ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` / ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc``,
    the default, or ``http/protobuf``; endpoint and headers from the exporter's own
    variables), sampled per ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, named
    ``service_name`` unless ``OTEL_SERVICE_NAME`` is set. Needs ``opentelemetry-sdk`` and
    the OTLP exporter (the server distribution has them; the SDK alone does not).
    """
    if not tracing_wanted():
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError("OTEL_* variables ask for tracing but opentelemetry-sdk is not "
                           "installed") from exc
    resource_attributes = dict(attributes or {})
    if not os.environ.get("OTEL_SERVICE_NAME"):
        resource_attributes["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(resource_attributes))
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    for name in names.split(","):
        provider.add_span_processor(BatchSpanProcessor(_exporter(name.strip())))
    trace.set_tracer_provider(provider)
    _providers.append(provider)
    return True


def shutdown_tracing() -> None:
    """Flushes and stops the exporters :func:`configure_from_env` installed."""
    while _providers:
        _providers.pop().shutdown()


class _AioTraceInterceptor:
    """The asyncio channels' counterpart of :class:`TraceClientInterceptor`."""

    def __init__(self, target: str) -> None:
        self.target = target

    async def _intercept(self, continuation: Callable[..., Any], details: Any,
                         request: Any) -> Any:
        import grpc.aio

        span = start_client_span(details.method, self.target)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *carrier.items())
        details = grpc.aio.ClientCallDetails(details.method, details.timeout, metadata,
                                             details.credentials, details.wait_for_ready)
        try:
            call = await continuation(details, request)
        except BaseException:
            span.end()
            raise
        call.add_done_callback(lambda done: asyncio.ensure_future(_end_aio(span, done)))
        return call


async def _end_aio(span: Any, call: Any) -> None:
    code = await call.code()  # an asyncio call's status is a coroutine
    end_span(span, _Done(code))


class _Done(NamedTuple):
    status: grpc.StatusCode

    def code(self) -> grpc.StatusCode:
        return self.status


def aio_interceptors(target: str) -> list[Any]:
    """Interceptors for ``grpc.aio.insecure_channel`` (none without OpenTelemetry)."""
    if trace is None:
        return []
    import grpc.aio

    class Unary(_AioTraceInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation: Any, details: Any,
                                        request: Any) -> Any:
            return await self._intercept(continuation, details, request)

    class Streaming(_AioTraceInterceptor, grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation: Any, details: Any,
                                         request: Any) -> Any:
            return await self._intercept(continuation, details, request)

    return [Unary(target), Streaming(target)]
