#!/usr/bin/env bash
# Check the deploy templates without Docker or a cluster:
#   - promtool check config on prometheus.yml (with its rule file), check rules, and the alert
#     rules' unit tests (promtool test rules alerts_test.yml);
#   - the compose file and the Kubernetes manifests parse as YAML, and agree with each other
#     (grace periods longer than the worker stop timeout, scrape targets that exist, ...).
# promtool comes from Debian's `prometheus` package when it is missing (root, apt); the
# Prometheus service is not started. The YAML part needs PyYAML and is skipped (with a note)
# without it. Run from anywhere: bash deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PROM=deploy/prometheus
tmp="$(mktemp -d)"
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

install_promtool() {
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "promtool is missing: install Debian's 'prometheus' package (it ships /usr/bin/promtool)," \
            "or put promtool on PATH" >&2
        exit 1
    fi
    echo "-- installing promtool (Debian package 'prometheus'; its service is not started)"
    # Keep the package's postinst from starting the service, unless a policy already exists.
    local own_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local status=0
    { apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
            >/dev/null; } || status=$?
    if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$status" -eq 0 ] || { echo "installing prometheus failed (exit $status)" >&2; exit "$status"; }
    # On a systemd host the package enables the unit for the next boot: undo that.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl disable --quiet prometheus 2>/dev/null || true
    fi
}

echo "== promtool"
command -v promtool >/dev/null || install_promtool
promtool --version 2>&1 | sed -n 1p

echo "-- check config (syntax of the file as shipped)"
promtool check config --syntax-only "$PROM/prometheus.yml"

# A full check also loads rule_files (relative to the config file) and stats every
# credentials/bearer token file, which only exists inside the Prometheus container
# (/run/secrets/dashboard_token). Check a copy whose token files point at a real file.
echo "-- check config (full, on a copy with the token file present)"
cp -r "$PROM" "$tmp/prometheus"
printf 'placeholder-token\n' >"$tmp/dashboard_token"
sed -E -i "s#^([[:space:]]*(credentials_file|bearer_token_file):[[:space:]]*).*#\1$tmp/dashboard_token#" \
    "$tmp/prometheus/prometheus.yml"
if diff -q "$PROM/prometheus.yml" "$tmp/prometheus/prometheus.yml" >/dev/null; then
    echo "expected prometheus.yml to name a credentials_file for the dashboard job" >&2
    exit 1
fi
promtool check config --lint=all --lint-fatal "$tmp/prometheus/prometheus.yml"

echo "-- check rules"
promtool check rules --lint=all --lint-fatal "$PROM/alerts.yml"

echo "-- test rules"
promtool test rules "$PROM/alerts_test.yml"

echo "== YAML: compose file and Kubernetes manifests"
PY="$(command -v python3 || command -v python || true)"
if [ -z "$PY" ] || ! "$PY" -c "import yaml" 2>/dev/null; then
    echo "note: PyYAML is not importable; skipped the YAML checks of docker-compose.yml and deploy/k8s/"
else
    "$PY" - <<'EOF'
import pathlib
import re
import sys

import yaml

root = pathlib.Path("deploy")
problems: list[str] = []


def seconds(value: object) -> float:
    """'30s', '2m', '1h', '500ms' or a bare number of seconds."""
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text)
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
    return float(match.group(1)) * scale


files = sorted(p for p in root.rglob("*") if p.suffix in (".yml", ".yaml"))
docs: dict[pathlib.Path, list] = {}
for path in files:
    try:
        docs[path] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        problems.append(f"{path}: not valid YAML: {exc}")
print(f"parsed {len(docs)} YAML files under deploy/")

# -- compose --------------------------------------------------------------------------------
compose = docs.get(root / "docker-compose.yml", [{}])[0]
services = compose.get("services", {})
for name in ("postgres", "migrate", "worker-1", "worker-2", "dashboard", "prometheus"):
    if name not in services:
        problems.append(f"docker-compose.yml: no service {name!r}")
for name, svc in services.items():
    env = svc.get("environment", {}) or {}
    if "OW_ES_STOP_TIMEOUT" in env:
        grace = seconds(svc.get("stop_grace_period", "10s"))
        if grace <= seconds(env["OW_ES_STOP_TIMEOUT"]):
            problems.append(f"docker-compose.yml: {name}: stop_grace_period {grace:g}s is not "
                            f"longer than OW_ES_STOP_TIMEOUT {env['OW_ES_STOP_TIMEOUT']}")
    if name.startswith("worker") and "OW_ES_METRICS_PORT" not in env:
        problems.append(f"docker-compose.yml: {name} serves no metrics (OW_ES_METRICS_PORT)")
    if name in ("migrate", "dashboard") or name.startswith("worker"):
        if "OW_ES_DATABASE_URL" not in env:
            problems.append(f"docker-compose.yml: {name} has no OW_ES_DATABASE_URL")
    build = svc.get("build")
    if isinstance(build, dict) and not (root.parent / build.get("dockerfile", "")).is_file():
        problems.append(f"docker-compose.yml: {name}: no such Dockerfile {build.get('dockerfile')}")

# -- Prometheus scrapes what compose runs -----------------------------------------------------
prometheus = docs.get(root / "prometheus" / "prometheus.yml", [{}])[0]
for job in prometheus.get("scrape_configs", []):
    for static in job.get("static_configs", []):
        for target in static.get("targets", []):
            host = target.rsplit(":", 1)[0]
            if host not in services:
                problems.append(f"prometheus.yml: job {job['job_name']} scrapes {target}, "
                                "which is no compose service")

# -- Kubernetes -----------------------------------------------------------------------------
k8s = root / "k8s"
for kpath in sorted(k8s.rglob("kustomization.yaml")):
    kust = docs.get(kpath, [{}])[0]
    for resource in kust.get("resources", []):
        if not (kpath.parent / resource).is_file():
            problems.append(f"{kpath}: resource {resource} does not exist")
for path, documents in docs.items():
    if k8s not in path.parents or path.name == "kustomization.yaml":
        continue
    for doc in documents:
        for key in ("apiVersion", "kind"):
            if key not in doc:
                problems.append(f"{path}: a document without {key}")
        if not (doc.get("metadata") or {}).get("name"):
            problems.append(f"{path}: a {doc.get('kind')} without metadata.name")
        if doc.get("kind") not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod.get("containers", []):
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            if "OW_ES_STOP_TIMEOUT" in env:
                grace = pod.get("terminationGracePeriodSeconds", 30)
                if grace <= seconds(env["OW_ES_STOP_TIMEOUT"]):
                    problems.append(f"{path}: terminationGracePeriodSeconds {grace} is not longer "
                                    f"than OW_ES_STOP_TIMEOUT {env['OW_ES_STOP_TIMEOUT']}")
            if "OW_ES_DATABASE_URL" not in env:
                problems.append(f"{path}: {container['name']} has no OW_ES_DATABASE_URL")
        name = doc["metadata"]["name"]
        if name == "ow-es-dashboard":
            probes = [container.get(p) for container in pod["containers"]
                      for p in ("readinessProbe", "livenessProbe")]
            if not all(p and p.get("httpGet", {}).get("path") == "/healthz" for p in probes):
                problems.append(f"{path}: the dashboard needs readiness and liveness on /healthz")

for problem in problems:
    print("FAIL", problem, file=sys.stderr)
if problems:
    sys.exit(1)
print("compose file and Kubernetes manifests: ok")
EOF
fi

echo "deploy templates: ok"
