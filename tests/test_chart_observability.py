"""The chart's observability objects, rendered by a real helm: scrape annotations and
metrics ports on every pod and Service, the optional ServiceMonitor (checked against the
Prometheus Operator's field names, since kubernetes-validate has no schema for it) whose
endpoints name ports the Services have, the Grafana dashboard ConfigMap whose every query
names a metric the code declares, the OTEL_* variables of tracing, and the HTTP front
wired to the gateway Service."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.test_chart import CHART, ROOT, of_kind, template

DASHBOARD = CHART / "dashboards" / "diffusion-fleet.json"
SERVICE_MONITOR_SPEC = {"selector", "namespaceSelector", "endpoints", "jobLabel",
                        "targetLabels", "podTargetLabels", "sampleLimit"}
ENDPOINT_FIELDS = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
                   "honorLabels", "relabelings", "metricRelabelings"}


def render(tmp_path: Path, values: dict[str, Any], *files: Path) -> list[dict[str, Any]]:
    proc = template(tmp_path, values, *files)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_every_pod_is_annotated_and_every_service_has_a_metrics_port(tmp_path: Path) -> None:
    docs = render(tmp_path, {}, ROOT / "deploy" / "values-colocated-gpu.yaml")
    for name, deployment in of_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]
        if name.endswith(("-redis", "-controller")):
            continue
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true", name
        for container in pod["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            if name.endswith("-http-front"):  # /metrics on its HTTP port
                env["DFLEET_METRICS_PORT"] = pod["metadata"]["annotations"]["prometheus.io/port"]
            ports = {p["containerPort"] for p in container["ports"]}
            assert int(env["DFLEET_METRICS_PORT"]) in ports, (name, container["name"])
    for name, service in of_kind(docs, "Service").items():
        if name.endswith(("-redis", "-controller-metrics", "-http-front")):
            continue  # the HTTP front's metrics are on its http port
        assert any(p["name"].startswith("metrics") for p in service["spec"]["ports"]), name


def test_metrics_can_be_switched_off(tmp_path: Path) -> None:
    docs = render(tmp_path, {"metrics": {"enabled": False, "port": 9090}})
    gateway = of_kind(docs, "Deployment")["dfleet-gateway"]["spec"]["template"]
    assert "annotations" not in gateway["metadata"]
    env = {e["name"] for e in gateway["spec"]["containers"][0]["env"]}
    assert "DFLEET_METRICS_PORT" not in env


def test_service_monitor_names_ports_the_services_have(tmp_path: Path) -> None:
    docs = render(tmp_path, {"metrics": {"enabled": True, "port": 9090, "serviceMonitor": {
        "enabled": True, "labels": {"release": "prom"}}}},
        ROOT / "deploy" / "values-colocated-gpu.yaml")
    (monitor,) = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert set(monitor["spec"]) <= SERVICE_MONITOR_SPEC
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {p["name"] for s in of_kind(docs, "Service").values()
             if selector.items() <= s["metadata"]["labels"].items()
             for p in s["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= ENDPOINT_FIELDS
        assert endpoint["port"] in ports, endpoint


def _declared_metrics() -> set[str]:
    from prometheus_client import REGISTRY

    import controller.metrics  # noqa: F401 - registers the controller's metrics
    import services.common.telemetry.metrics  # noqa: F401
    import services.common.transport.metrics  # noqa: F401
    import services.controlnet.metrics  # noqa: F401

    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
    return names | {"dfleet_denoiser_lora_patch_switches"}  # a collector the denoiser adds


def test_dashboard_queries_name_declared_metrics(tmp_path: Path) -> None:
    docs = render(tmp_path, {"metrics": {"enabled": True, "port": 9090,
                                         "grafanaDashboard": {"enabled": True}}})
    config_map = of_kind(docs, "ConfigMap")["dfleet-dashboard"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["diffusion-fleet.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())
    declared = _declared_metrics()
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"dfleet_[a-z_]+", target["expr"]):
                queried.add(re.sub(r"_(bucket|sum|count|total)$", "", name))
    assert queried and queried <= declared, queried - declared


def test_tracing_sets_the_standard_variables(tmp_path: Path) -> None:
    docs = render(tmp_path, {"tracing": {"enabled": True, "endpoint": "http://otel:4317"}})
    env = {e["name"]: e.get("value") for e in of_kind(docs, "Deployment")["dfleet-denoiser"]
           ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    proc = template(tmp_path, {"tracing": {"enabled": True}})
    assert proc.returncode != 0 and "tracing.endpoint is required" in proc.stderr


def test_http_front_calls_the_gateway_service(tmp_path: Path) -> None:
    docs = render(tmp_path, {})
    front = of_kind(docs, "Deployment")["dfleet-http-front"]["spec"]["template"]["spec"]
    (container,) = front["containers"]
    assert container["command"] == ["python", "-m", "services.http_front"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    gateway = of_kind(docs, "Service")["dfleet-gateway"]
    grpc_port = next(p["port"] for p in gateway["spec"]["ports"] if p["name"] == "grpc")
    assert env["DFLEET_GATEWAY"] == f"dfleet-gateway:{grpc_port}"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    service = of_kind(docs, "Service")["dfleet-http-front"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    off = render(tmp_path, {"httpFront": {"enabled": False}})
    assert "dfleet-http-front" not in of_kind(off, "Deployment")
