"""OpenTelemetry tracing of a service process, configured by the standard ``OTEL_*`` variables.

:func:`dfleet.tracing.configure_from_env` says when tracing is on and how it exports;
the service name is ``dfleet-<role>`` unless ``OTEL_SERVICE_NAME`` says otherwise.
Off, nothing is installed: no provider, no exporter, no interceptor, no span object.
Work handed to another thread keeps its trace through :func:`in_this_context` or
:class:`ContextThreadPool`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from dfleet.tracing import configure_from_env

log = logging.getLogger("dfleet.tracing")
_state = {"enabled": False}
P = ParamSpec("P")
R = TypeVar("R")


def enabled() -> bool:
    return _state["enabled"]


def configure_tracing(role: str) -> bool:
    """Installs the tracer provider of this process when the environment asks for one."""
    _state["enabled"] = configure_from_env(f"dfleet-{role}", {"dfleet.role": role})
    if _state["enabled"]:
        log.info("tracing on", extra={"role": role})
    return _state["enabled"]


def current_span_context() -> Any:
    """The current span's context when tracing is on and a span is current, else None."""
    if not enabled():
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def in_this_context(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` bound to the caller's context (current span): for work handed to a thread."""
    if not enabled():
        return fn
    context = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return context.copy().run(fn, *args, **kwargs)

    return run


class ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose tasks run in the context (trace) of whoever submitted them."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        return super().submit(in_this_context(fn), *args, **kwargs)


def instrument_redis(client: Any) -> None:
    """CLIENT spans for the Redis commands (and pipelines) of a request's trace.

    Only commands issued inside a recording span get one: heartbeats and other
    background traffic would otherwise start a trace each.
    """
    if not enabled():
        return
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    tracer = trace.get_tracer("dfleet")

    def traced(name: Callable[..., str], call: Callable[..., R]) -> Callable[..., R]:
        def run(*args: Any, **kwargs: Any) -> R:
            if not trace.get_current_span().is_recording():
                return call(*args, **kwargs)
            with tracer.start_as_current_span(f"redis {name(*args)}", kind=SpanKind.CLIENT,
                                              attributes={"db.system": "redis"}):
                return call(*args, **kwargs)
        return run

    client.execute_command = traced(lambda *args: str(args[0]) if args else "?",
                                    client.execute_command)
    make_pipeline = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        pipe.execute = traced(lambda *a: f"pipeline ({len(pipe.command_stack)} commands)",
                              pipe.execute)
        return pipe

    client.pipeline = pipeline


@contextlib.contextmanager
def batch_span(model: str, works: list[Any]) -> Iterator[None]:
    """A span over one step batch, linked to the request span of each work in it.

    Its own trace: a batch serves several requests, so it is no request's child; the
    links lead from it to every request.
    """
    if not enabled():
        yield
        return
    from opentelemetry import trace
    from opentelemetry.trace import Link

    links = [Link(w.trace_link) for w in works if getattr(w, "trace_link", None) is not None]
    with trace.get_tracer("dfleet").start_as_current_span(
            "denoiser step batch", context=trace.set_span_in_context(trace.INVALID_SPAN),
            links=links, attributes={"dfleet.model": model,
                                     "dfleet.batch_requests": len(works),
                                     "dfleet.request_ids": [str(w.request_id) for w in works]}):
        yield
