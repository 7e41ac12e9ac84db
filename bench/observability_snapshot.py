"""Pictures for docs/observability.md, made from a real run of a local fleet.

Starts the tiny-model fleet with tracing on (OTLP/gRPC to an in-process receiver, the
collector's own TraceService protocol) and metrics on every role, sends a small mix of
requests through the SDK (text-to-image, ControlNet + LoRA, image-to-image), then:

- draws the trace of one ControlNet + LoRA request as a timeline of its spans, one row
  per span, coloured by service, indented by depth (``docs/images/trace.png``);
- scrapes GET /metrics of every replica and draws the quantities the Grafana dashboard
  (charts/diffusion-fleet/dashboards/diffusion-fleet.json) shows, computed from the
  scraped histograms with the same formulas (``docs/images/dashboard.png``).

No Grafana runs here: both pictures are matplotlib drawings of the collected spans and
the scraped metrics. The raw spans and metrics go to bench/results/observability/.

    python bench/observability_snapshot.py [--requests 6] [--out docs/images]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import requests  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import dfleet  # noqa: E402
from dfleet.local_fleet import LocalFleet  # noqa: E402
from services.common.fleet_state import FleetState  # noqa: E402
from services.common.tiny_model import write_tiny_model  # noqa: E402
from tests.diffusers_reference import sample_image  # noqa: E402
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan  # noqa: E402

ROLES = ("gateway", "text_encoder", "denoiser", "controlnet", "lora_cache", "vae")
COLOURS = {"dfleet-sdk": "#555555", "dfleet-gateway": "#1f77b4",
           "dfleet-text_encoder": "#2ca02c", "dfleet-denoiser": "#d62728",
           "dfleet-controlnet": "#9467bd", "dfleet-lora_cache": "#ff7f0e",
           "dfleet-vae": "#8c564b"}


def run_requests(address: str, count: int) -> str:
    """Sends a mix of requests; returns the trace id of the first ControlNet + LoRA one."""
    from opentelemetry import trace

    tracer = trace.get_tracer("bench")
    traced = ""
    with dfleet.Client(address, timeout=300) as client:
        for i in range(count):
            kind = ("controlnet+lora", "txt2img", "img2img")[i % 3]
            params: dict[str, Any] = {"seed": i, "steps": 8}
            if kind == "controlnet+lora":
                params.update(controlnets=[dfleet.ControlNet("tiny-cn-a", image=sample_image(i))],
                              loras=[dfleet.Lora("tiny-lora-r4", 0.7)])
            elif kind == "img2img":
                params.update(image=sample_image(i + 100), strength=0.6)
            with tracer.start_as_current_span(f"request {kind}") as span:
                client.generate("a red fox in the snow", **params)
                if kind == "controlnet+lora" and not traced:
                    traced = f"{span.get_span_context().trace_id:032x}"
    return traced


def draw_trace(spans: list[ReceivedSpan], out: Path) -> None:
    by_id = {s.span_id: s for s in spans}

    def depth(span: ReceivedSpan) -> int:
        level = 0
        while span.parent_id in by_id:
            span, level = by_id[span.parent_id], level + 1
        return level

    ordered = sorted(spans, key=lambda s: s.start_ns)
    origin = min(s.start_ns for s in spans)
    fig, ax = plt.subplots(figsize=(12, 0.28 * len(ordered) + 1.5))
    for row, span in enumerate(ordered):
        start, end = span.start_ns, span.end_ns
        ax.barh(row, (end - start) / 1e6, left=(start - origin) / 1e6, height=0.7,
                color=COLOURS.get(span.service, "#999999"))
        ax.text((start - origin) / 1e6, row, "  " * depth(span) + span.name, va="center",
                ha="left", fontsize=7)
    ax.set_yticks(range(len(ordered)), [s.service.removeprefix("dfleet-") for s in ordered],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the request started")
    ax.set_title("One ControlNet + LoRA request: its trace (spans as exported by OTLP)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def scrape_all(redis_url: str) -> dict[str, list[Any]]:
    state = FleetState.from_url(redis_url)
    scraped = {}
    for role in ROLES:
        replica = state.replicas(role)[0]
        text = requests.get(f"http://127.0.0.1:{replica.extra['metrics_port']}/metrics",
                            timeout=30).text
        scraped[role] = list(text_string_to_metric_families(text))
    return scraped


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank, previous_le, previous_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return previous_le
            return previous_le + (le - previous_le) * (rank - previous_count) / max(
                count - previous_count, 1e-12)
        previous_le, previous_count = le, count
    return previous_le


def histogram_quantiles(families: list[Any], name: str, by: str) -> dict[str, tuple[float, float]]:
    groups: dict[str, list[tuple[float, float]]] = {}
    for family in families:
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == name + "_bucket":
                key = sample.labels.get(by, "")
                groups.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
    return {key: (quantile(b, 0.5), quantile(b, 0.95)) for key, b in groups.items()}


def draw_dashboard(scraped: dict[str, list[Any]], out: Path) -> None:
    panels = [("Gateway request latency by workflow", "gateway",
               "dfleet_gateway_request_duration_seconds", "workflow"),
              ("Time to first step (queue time) by workflow", "gateway",
               "dfleet_gateway_time_to_first_step_seconds", "workflow"),
              ("Denoiser step time", "denoiser", "dfleet_denoiser_step_duration_seconds",
               "model"),
              ("Text encoder encode time", "text_encoder",
               "dfleet_text_encoder_encode_duration_seconds", "model"),
              ("VAE decode time", "vae", "dfleet_vae_decode_duration_seconds", "model"),
              ("VAE encode time", "vae", "dfleet_vae_encode_duration_seconds", "model")]
    fig, axes = plt.subplots(3, 3, figsize=(14, 9))
    for ax, (title, role, name, by) in zip(axes.flat, panels, strict=False):
        values = histogram_quantiles(scraped[role], name, by)
        keys = sorted(values)
        xs = range(len(keys))
        ax.bar([x - 0.2 for x in xs], [values[k][0] * 1e3 for k in keys], 0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [values[k][1] * 1e3 for k in keys], 0.4, label="p95")
        ax.set_xticks(list(xs), keys, fontsize=7, rotation=15)
        ax.set_ylabel("ms")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    _draw_counts(axes.flat[6], "Denoiser batch size (requests per step batch)",
                 scraped["denoiser"], "dfleet_denoiser_batch_size_requests")
    _draw_cache(axes.flat[7], scraped)
    _draw_transport(axes.flat[8], scraped)
    fig.suptitle("diffusion-fleet dashboard quantities, from /metrics of every role "
                 "after one run (drawn with matplotlib)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _draw_counts(ax: Any, title: str, families: list[Any], name: str) -> None:
    buckets = sorted((float(s.labels["le"]), s.value) for f in families if f.name == name
                     for s in f.samples if s.name == name + "_bucket")
    labels, counts, previous = [], [], 0.0
    for le, cumulative in buckets:
        if le == float("inf"):
            continue
        labels.append(f"<={le:g}")
        counts.append(cumulative - previous)
        previous = cumulative
    ax.bar(labels, counts)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", labelsize=7)


def _draw_cache(ax: Any, scraped: dict[str, list[Any]]) -> None:
    def total(role: str, name: str, **labels: str) -> float:
        return sum(s.value for f in scraped[role] if f.name == name for s in f.samples
                   if s.name == name + "_total" and labels.items() <= s.labels.items())

    bars = {"LoRA hit": total("lora_cache", "dfleet_lora_cache_lookups", status="hit"),
            "LoRA miss": total("lora_cache", "dfleet_lora_cache_lookups", status="miss"),
            "ControlNet hit": total("controlnet", "dfleet_controlnet_cache_hits"),
            "ControlNet miss": total("controlnet", "dfleet_controlnet_cache_misses")}
    ax.bar(list(bars), list(bars.values()))
    ax.set_title("Cache lookups", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)


def _draw_transport(ax: Any, scraped: dict[str, list[Any]]) -> None:
    sent: dict[str, float] = {}
    for role, families in scraped.items():
        for f in families:
            if f.name == "dfleet_transport_bytes":
                for s in f.samples:
                    if s.name.endswith("_total"):
                        key = f"{role}\n{s.labels['kind']}"
                        sent[key] = sent.get(key, 0.0) + s.value / 1e6
    ax.bar(list(sent), list(sent.values()))
    ax.set_title("Tensor bytes exported by role and payload kind (MB)", fontsize=9)
    ax.tick_params(axis="x", labelsize=6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6, help="requests in the mix")
    parser.add_argument("--out", default="docs/images", help="folder for the PNG files")
    parser.add_argument("--raw", default="bench/results/observability",
                        help="folder for the raw spans and metrics")
    args = parser.parse_args()
    out, raw = Path(args.out), Path(args.raw)
    out.mkdir(parents=True, exist_ok=True)
    raw.mkdir(parents=True, exist_ok=True)
    models = write_tiny_model(Path(tempfile.mkdtemp(prefix="dfleet-obs-")), seed=0)
    with OtlpReceiver() as receiver:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "100"}
        os.environ.update(otel)
        from dfleet.tracing import configure_from_env, shutdown_tracing

        configure_from_env("dfleet-sdk")
        with LocalFleet(str(models), env={**otel, "DFLEET_METRICS_PORT": "0"}) as fleet:
            trace_id = run_requests(fleet.gateway_address, args.requests)
            shutdown_tracing()
            spans = [s for s in receiver.wait_for(lambda got: {
                f"dfleet-{r}" for r in ROLES} <= {s.service for s in got
                                                   if s.trace_id == trace_id})
                if s.trace_id == trace_id]
            scraped = scrape_all(fleet.redis_url)
    draw_trace(spans, out / "trace.png")
    draw_dashboard(scraped, out / "dashboard.png")
    (raw / "trace.json").write_text(json.dumps([asdict(s) for s in spans], indent=1,
                                               default=str))
    (raw / "metrics.json").write_text(json.dumps(
        {role: [{"name": f.name, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
                for f in families if f.name.startswith("dfleet_")]
         for role, families in scraped.items()}, indent=1))
    print(f"trace {trace_id}: {len(spans)} spans from "
          f"{sorted({s.service for s in spans})}")
    print(f"wrote {out / 'trace.png'}, {out / 'dashboard.png'} and {raw}/")


if __name__ == "__main__":
    main()
