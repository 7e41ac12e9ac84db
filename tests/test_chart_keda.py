"""KEDA instead of the project's controller, rendered by a real helm: one ScaledObject
per model node and per co-located group, checked against KEDA's field names (its CRDs
are not among kubernetes-validate's schemas), scaling the Deployments the chart renders,
on the same queues and settings the controller's config would use, through the HTTP
front's queue-depth route; KEDA and the controller never both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.test_chart import ROOT, of_kind, template

SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
        "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
        "triggers"}
TARGET = {"name", "apiVersion", "kind", "envSourceContainerName"}
ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig",
            "scalingModifiers"}
TRIGGER = {"type", "name", "metadata", "metricType", "authenticationRef", "useCachedMetrics"}
METRICS_API = {"url", "format", "valueLocation", "targetValue", "activationTargetValue",
               "authMode", "unsafeSsl", "method"}
COLOCATED = ROOT / "deploy" / "values-colocated-gpu.yaml"


def render(tmp_path: Path, values: dict[str, Any], *files: Path) -> list[dict[str, Any]]:
    proc = template(tmp_path, values, *files)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def keda_values() -> dict[str, Any]:
    return {"keda": {"enabled": True, "pollingInterval": 2}, "controller": {"enabled": False}}


def test_scaled_objects_use_keda_field_names(tmp_path: Path) -> None:
    docs = render(tmp_path, keda_values(), COLOCATED)
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        assert set(spec) <= SPEC and set(spec["scaleTargetRef"]) <= TARGET
        assert set(spec["advanced"]) <= ADVANCED
        assert set(spec["advanced"]["horizontalPodAutoscalerConfig"]) <= {"name", "behavior"}
        for trigger in spec["triggers"]:
            assert set(trigger) <= TRIGGER and trigger["type"] == "metrics-api"
            assert trigger["metricType"] in ("AverageValue", "Value", "Utilization")
            assert set(trigger["metadata"]) <= METRICS_API
            assert all(isinstance(v, str) for v in trigger["metadata"].values())


def _controller_queues(tmp_path: Path) -> dict[str, tuple[set[str], dict[str, Any]]]:
    docs = render(tmp_path, {}, COLOCATED)
    config = yaml.safe_load(of_kind(docs, "ConfigMap")["dfleet-controller"]["data"]
                            ["controller.yaml"])
    return {n["deployment"]: (set(n.get("queues") or [f"{n['role']}:{n['model']}"]), n)
            for n in config["nodes"]}


def test_each_node_scales_on_the_controllers_queues_and_settings(tmp_path: Path) -> None:
    expected = _controller_queues(tmp_path)
    docs = render(tmp_path, keda_values(), COLOCATED)
    deployments = of_kind(docs, "Deployment")
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d["spec"] for d in docs
              if d["kind"] == "ScaledObject"}
    assert set(scaled) == set(expected)
    for name, spec in scaled.items():
        assert name in deployments and "replicas" not in deployments[name]["spec"]
        queues, node = expected[name]
        urls = {t["metadata"]["url"] for t in spec["triggers"]}
        assert urls == {f"http://dfleet-http-front:8000/v1/queue-depth/{q}" for q in queues}
        assert spec["minReplicaCount"] == node["min_replicas"]
        assert spec["maxReplicaCount"] == node["max_replicas"]
        assert spec["cooldownPeriod"] == node["idle_to_zero_s"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == node[
            "down_stabilization_s"]
        for trigger in spec["triggers"]:
            assert trigger["metadata"]["valueLocation"] == "depth"
            assert float(trigger["metadata"]["targetValue"]) == node[
                "target_depth_per_replica"]
            assert int(trigger["metadata"]["activationTargetValue"]) == node[
                "activation_threshold"] - 1  # KEDA activates above the value


def test_keda_and_the_controller_exclude_each_other(tmp_path: Path) -> None:
    proc = template(tmp_path, {"keda": {"enabled": True}})
    assert proc.returncode != 0 and "enable one" in proc.stderr
    proc = template(tmp_path, {**keda_values(), "httpFront": {"enabled": False}})
    assert proc.returncode != 0 and "keda.depthUrl" in proc.stderr
    docs = render(tmp_path, {**keda_values(), "httpFront": {"enabled": False},
                             "keda": {"enabled": True, "depthUrl": "http://depth:1/d"}})
    urls = {t["metadata"]["url"] for d in docs if d["kind"] == "ScaledObject"
            for t in d["spec"]["triggers"]}
    assert urls and all(u.startswith("http://depth:1/d/") for u in urls)
    assert not [d for d in render(tmp_path, {}) if d["kind"] == "ScaledObject"]
