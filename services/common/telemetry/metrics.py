"""The Prometheus metrics every role records, named ``dfleet_<component>_<what>_<unit>``.

Declared in one place so roles share names and buckets without importing each other;
labels stay within role, model, workflow, method and status. The transport's own
``dfleet_transport_*`` and the ControlNet cache's metrics live beside their code and are
served by the same registry (``services.common.server.start_metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from services.common.telemetry.tracing import batch_span

_M = TypeVar("_M", Counter, Gauge, Histogram)

# Seconds: from a sub-millisecond RPC to a long request on a busy CPU.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0, 120.0)
REQUESTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


def _metric(cls: type[_M], name: str, doc: str, labels: tuple[str, ...] = (),
            **kwargs: Any) -> _M:
    """The metric of that name, created on first use; a re-imported module reuses it."""
    try:
        return cls(name, doc, labels, **kwargs)
    except ValueError:  # already registered by an earlier import of this module
        existing: Any = REGISTRY._names_to_collectors[name]
        return existing  # type: ignore[no-any-return]


RPC_SECONDS = _metric(Histogram, "dfleet_rpc_server_duration_seconds",
                      "Time a service spent on each RPC it served, by method and status.",
                      ("role", "method", "status"), buckets=SECONDS)
GATEWAY_REQUEST_SECONDS = _metric(
    Histogram, "dfleet_gateway_request_duration_seconds",
    "Generate requests from acceptance to their terminal state.",
    ("model", "workflow", "status"), buckets=SECONDS)
GATEWAY_FIRST_STEP_SECONDS = _metric(
    Histogram, "dfleet_gateway_time_to_first_step_seconds",
    "From acceptance to the first denoising step's progress: placement, waiting for a "
    "replica, encoding and the denoiser's queue (the request's queue time), plus one step.",
    ("model", "workflow"), buckets=SECONDS)
DENOISER_STEP_SECONDS = _metric(
    Histogram, "dfleet_denoiser_step_duration_seconds",
    "Time of one step of one batch (every request in it advances one step).",
    ("model",), buckets=SECONDS)
DENOISER_BATCH_REQUESTS = _metric(
    Histogram, "dfleet_denoiser_batch_size_requests", "Requests in each step batch.",
    ("model",), buckets=REQUESTS)
DENOISER_ACTIVE_REQUESTS = _metric(
    Gauge, "dfleet_denoiser_active_requests", "Requests in the step loop (running or waiting).")
TEXT_ENCODE_SECONDS = _metric(
    Histogram, "dfleet_text_encoder_encode_duration_seconds",
    "Time to encode the prompts of one call.", ("model",), buckets=SECONDS)
VAE_ENCODE_SECONDS = _metric(
    Histogram, "dfleet_vae_encode_duration_seconds", "Time to encode one image to latents.",
    ("model",), buckets=SECONDS)
VAE_DECODE_SECONDS = _metric(
    Histogram, "dfleet_vae_decode_duration_seconds", "Time to decode latents to an image.",
    ("model",), buckets=SECONDS)
LORA_CACHE_LOOKUPS = _metric(
    Counter, "dfleet_lora_cache_lookups",
    "LoRA lookups (prepare and fetch calls), by status hit or miss.",
    ("model", "status"))
LORA_CACHE_LOAD_SECONDS = _metric(
    Histogram, "dfleet_lora_cache_load_duration_seconds",
    "Time to bring a missed LoRA from storage into host memory.", ("model",),
    buckets=SECONDS)


class RequestTimer:
    """Times one gateway request: its first step and its end, each observed once."""

    def __init__(self, model: str, workflow: str) -> None:
        self.labels = (model, workflow)
        self.started = time.monotonic()
        self._first_step_seen = False

    def step(self) -> None:
        if not self._first_step_seen:
            self._first_step_seen = True
            GATEWAY_FIRST_STEP_SECONDS.labels(*self.labels).observe(
                time.monotonic() - self.started)

    def done(self, code: int = 0) -> None:
        """``code``: the gRPC status code number of the outcome (0 = OK)."""
        status = _CODE_NAMES.get(code, "UNKNOWN")
        GATEWAY_REQUEST_SECONDS.labels(*self.labels, status).observe(
            time.monotonic() - self.started)


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


_R = TypeVar("_R", bound=Sequence[Any])


def observed_batches(run_batch: Callable[[Any, list[Any]], _R]
                     ) -> Callable[[Any, list[Any]], _R]:
    """Wraps the denoiser's batch runner: step time and batch size per model and, with
    tracing on, a span per step batch linked to the span of every request in it."""

    def run(unet: Any, works: list[Any]) -> _R:
        model = str(works[0].model) if works else ""
        started = time.perf_counter()
        with batch_span(model, works):
            outcome = run_batch(unet, works)
        DENOISER_STEP_SECONDS.labels(model).observe(time.perf_counter() - started)
        DENOISER_BATCH_REQUESTS.labels(model).observe(len(works))
        return outcome

    return run


class PatchSwitchCollector(Collector):
    """``dfleet_denoiser_lora_patch_switches_total``: read from the UNets' patchers at scrape."""

    def __init__(self, switches: Callable[[], dict[str, int]]) -> None:
        self.switches = switches

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "dfleet_denoiser_lora_patch_switches",
            "Times a UNet's merged LoRA patch changed (each costs a restore and a merge).",
            labels=("model",))
        for model, count in sorted(self.switches().items()):
            family.add_metric((model,), count)
        yield family


def register_patch_switches(switches: Callable[[], dict[str, int]]) -> None:
    REGISTRY.register(PatchSwitchCollector(switches))
