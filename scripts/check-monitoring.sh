#!/usr/bin/env bash
# Checks deploy/monitoring without a cluster or Grafana:
# - the PrometheusRule's groups pass `promtool check rules`, every alert has
#   a severity, a summary and a description, and its unit tests
#   (deploy/monitoring/tests) pass, with each alert shown firing on bad
#   input and silent on healthy input;
# - the PrometheusRule and PodMonitors validate against the CRDs of the
#   Prometheus Operator release below, unknown fields rejected, and the
#   kustomization lists them;
# - dashboard.json parses, its panels fit Grafana's grid and use the
#   ${datasource} variable, and every query (variables filled in as
#   scripts/dashboard-preview.py does) parses as PromQL;
# - the dashboard and the rules use only the metric names below, which the
#   driver serves (src/metrics) and the node-loss cleanup (src/node_loss);
# - with `--metrics FILE` (a scrape of a running driver or cleanup; may be
#   repeated): `promtool check metrics` has no complaint, and the file has
#   every name above that its process always serves (the others are
#   checked when present).
# Installs promtool with `go install` into target/tools/bin.
# Usage: scripts/check-monitoring.sh [--metrics FILE]...
set -euo pipefail
cd "$(dirname "$0")/.."

PROMETHEUS_MODULE=github.com/prometheus/prometheus
PROMETHEUS_VERSION=v0.316.0 # Prometheus v3.16.0's promtool
OPERATOR=github.com/prometheus-operator/prometheus-operator@v0.85.0
promtool=target/tools/bin/promtool
venv=${HOSTPATH_CSI_VENV:-target/deploy-venv}

# The names the driver's node plugin serves: labels in comments.
NODE_METRICS=(
  hostpath_csi_build_info                 # version, node
  hostpath_csi_rpc_requests_total         # method, code
  hostpath_csi_rpc_duration_seconds_bucket # method, le
  hostpath_csi_rpc_duration_seconds_sum
  hostpath_csi_rpc_duration_seconds_count
  hostpath_csi_pool_size_bytes            # pool
  hostpath_csi_pool_free_bytes
  hostpath_csi_pool_used_bytes
  hostpath_csi_pool_promised_bytes
  hostpath_csi_pool_volumes_used_bytes
  hostpath_csi_pool_enforcement           # pool, mode
  hostpath_csi_pool_trash_entries         # pool
  hostpath_csi_pool_trash_removed_total
  hostpath_csi_pool_problem               # pool, reason
  hostpath_csi_memory_budget_bytes
  hostpath_csi_memory_promised_bytes
  hostpath_csi_volumes                    # pool, kind
  hostpath_csi_volume_problems            # pool, kind, reason
  hostpath_csi_records_unreadable         # pool
  hostpath_csi_snapshots                  # pool, method
  hostpath_csi_snapshots_not_ready        # pool
)
# Only with the driver's --volume-metrics: pool, kind, volume, name.
OPT_IN_METRICS=(hostpath_csi_volume_capacity_bytes hostpath_csi_volume_used_bytes)
# Families a page leaves out while they have no series (no call served yet,
# no volume, snapshot or problem): a scrape need not have them.
WHEN_ANY_METRICS=(
  hostpath_csi_rpc_requests_total hostpath_csi_rpc_duration_seconds_bucket
  hostpath_csi_rpc_duration_seconds_sum hostpath_csi_rpc_duration_seconds_count
  hostpath_csi_pool_problem hostpath_csi_volumes hostpath_csi_volume_problems
  hostpath_csi_records_unreadable hostpath_csi_snapshots
)
NODE_LOSS_METRICS=(
  hostpath_csi_node_loss_volumes_deleted_total
  hostpath_csi_node_loss_claims_deleted_total
  hostpath_csi_node_loss_failures_total
  hostpath_csi_node_loss_claims_kept
  hostpath_csi_node_loss_nodes_gone
  hostpath_csi_node_loss_leader
)

usage() { echo "usage: $0 [--metrics FILE]..." >&2; exit 2; }
metrics_files=()
while [ $# -gt 0 ]; do
  case "$1" in
    --metrics) [ $# -ge 2 ] || usage; metrics_files+=("$(realpath "$2")"); shift 2 ;;
    *) usage ;;
  esac
done

if ! go version -m "$promtool" 2>/dev/null | grep -qP "^\tmod\t$PROMETHEUS_MODULE\t$PROMETHEUS_VERSION\t"; then
  echo "== installing promtool $PROMETHEUS_VERSION into $(dirname "$promtool")"
  GOBIN="$PWD/$(dirname "$promtool")" go install "$PROMETHEUS_MODULE/cmd/promtool@$PROMETHEUS_VERSION"
fi
# The venv scripts/check-deploy.sh uses: kubernetes-validate brings
# jsonschema and PyYAML.
if ! "$venv/bin/python" -c 'import jsonschema, yaml' 2>/dev/null; then
  echo "== installing kubernetes-validate (jsonschema, PyYAML) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi
python="$venv/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== promtool check rules (deploy/monitoring/prometheusrule.yaml's groups)"
"$python" - deploy/monitoring/prometheusrule.yaml "$tmp/rules.yaml" <<'PY'
import sys, yaml
source, target = sys.argv[1:]
rule = yaml.safe_load(open(source))
if rule.get("kind") != "PrometheusRule":
    sys.exit(f"{source}: not a PrometheusRule")
for group in rule["spec"]["groups"]:
    for r in group["rules"]:
        if "alert" not in r:
            continue
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            sys.exit(f"{source}: {r['alert']}: severity must be critical, warning or info")
        for key in ("summary", "description"):
            if not r.get("annotations", {}).get(key):
                sys.exit(f"{source}: {r['alert']}: no {key} annotation")
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(target, "w"), sort_keys=False)
PY
"$promtool" check rules --lint=all --lint-fatal "$tmp/rules.yaml"

echo "== promtool test rules (deploy/monitoring/tests)"
# The tests name rules.yaml: they run beside the extracted groups.
cp deploy/monitoring/tests/*.yaml "$tmp/"
tests=()
for file in deploy/monitoring/tests/*.yaml; do tests+=("$tmp/$(basename "$file")"); done
"$promtool" test rules "${tests[@]}"
# Each alert must be seen both firing and silent in the tests.
"$python" - "$tmp/rules.yaml" "${tests[@]}" <<'PY'
import sys, yaml
rules, tests = sys.argv[1], sys.argv[2:]
alerts = {r["alert"] for g in yaml.safe_load(open(rules))["groups"] for r in g["rules"] if "alert" in r}
fired, silent, cases = set(), set(), 0
for path in tests:
    for test in yaml.safe_load(open(path))["tests"]:
        for case in test.get("alert_rule_test", []):
            cases += 1
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
missing = sorted(a for a in alerts if a not in fired or a not in silent)
if missing:
    sys.exit("alerts not tested both firing and silent: " + ", ".join(missing))
unknown = sorted((fired | silent) - alerts)
if unknown:
    sys.exit("tests of alerts that do not exist: " + ", ".join(unknown))
print(f"{len(alerts)} alerts, each firing and silent in {cases} test cases")
PY

# kubernetes-validate knows no custom resources: the Prometheus Operator's
# objects are checked against the CRDs of the release named above.
echo "== deploy/monitoring objects against the CRDs of $OPERATOR"
crds=$(go mod download -json "$OPERATOR" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')/example/prometheus-operator-crd
manifests=$(find deploy/monitoring -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | sort)
# shellcheck disable=SC2086 # one file per word
"$python" scripts/manifest_checks.py custom-resources monitoring.coreos.com "$crds" $manifests
# shellcheck disable=SC2086
"$python" - deploy/monitoring/kustomization.yaml $manifests <<'PY'
import os, sys, yaml
kustomization, files = sys.argv[1], sys.argv[2:]
kinds = []
for path in files:
    for doc in yaml.safe_load_all(open(path)):
        if not (doc or {}).get("apiVersion", "").startswith("monitoring.coreos.com/"):
            sys.exit(f"{path}: {(doc or {}).get('kind')} is no Prometheus Operator object")
        kinds.append(doc["kind"])
listed = sorted(yaml.safe_load(open(kustomization))["resources"])
if listed != sorted(os.path.basename(f) for f in files):
    sys.exit(f"{kustomization} lists {listed}, the folder has {[os.path.basename(f) for f in files]}")
for kind in ("PrometheusRule", "PodMonitor"):
    if kind not in kinds:
        sys.exit(f"no {kind} under deploy/monitoring")
print(f"all listed in {kustomization}")
PY

echo "== deploy/monitoring/dashboard.json: grid, datasource, queries"
python3 scripts/dashboard-preview.py --dashboard deploy/monitoring/dashboard.json --list-queries >"$tmp/queries.json"
"$python" - deploy/monitoring/dashboard.json "$tmp/queries.json" "$tmp/rules.yaml" "$tmp/dashboard-rules.yaml" \
  "${NODE_METRICS[*]} ${OPT_IN_METRICS[*]} ${NODE_LOSS_METRICS[*]} up" <<'PY'
import json, re, sys, yaml
source, queries_path, rules_path, out, known = sys.argv[1:]
known = set(known.split())
dashboard = json.load(open(source))
if not 36 <= dashboard.get("schemaVersion", 0) <= 41:
    sys.exit(f"{source}: schemaVersion {dashboard.get('schemaVersion')}, not a Grafana 10/11 one")
variables = {v["name"]: v for v in dashboard["templating"]["list"]}
if variables.get("datasource", {}).get("type") != "datasource" or variables["datasource"].get("query") != "prometheus":
    sys.exit(f"{source}: no datasource variable of type prometheus")
ids, cells = set(), {}
for panel in dashboard["panels"]:
    where = f"{source}: panel {panel.get('id')} ({panel.get('title')})"
    if panel["id"] in ids:
        sys.exit(f"{where}: id used twice")
    ids.add(panel["id"])
    g = panel["gridPos"]
    if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24 or g["h"] < 1:
        sys.exit(f"{where}: gridPos {g} outside the 24 columns")
    for x in range(g["x"], g["x"] + g["w"]):
        for y in range(g["y"], g["y"] + g["h"]):
            if (x, y) in cells:
                sys.exit(f"{where}: overlaps {cells[(x, y)]}")
            cells[(x, y)] = panel["title"]
    if panel["type"] == "row":
        continue
    for thing in [panel] + panel.get("targets", []):
        if thing.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            sys.exit(f"{where}: datasource is not the ${{datasource}} variable")
    if not panel.get("targets"):
        sys.exit(f"{where}: no query")

KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
def metric_names(expr):
    """Metric names an expression selects: what is left once strings,
    matchers, ranges, grouping clauses, function names and keywords go."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if not s[m.end():].lstrip().startswith("(") and m.group(0) not in KEYWORDS:
            names.add(m.group(0))
    return names

queries = json.load(open(queries_path))
rules = [(f"alert {r['alert']}", r["expr"]) for g in yaml.safe_load(open(rules_path))["groups"]
         for r in g["rules"] if "alert" in r]
problems = []
for where, expr in [(f"dashboard: {q['panel']} {q['refId']}", q["expr"]) for q in queries] + rules:
    for name in sorted(metric_names(expr) - known):
        problems.append(f"{where}: unknown metric {name}")
if problems:
    sys.exit("\n".join(problems))
# Every query as a recording rule: `promtool check rules` parses each.
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:query_{i}", "expr": q["expr"]} for i, q in enumerate(queries)]}]},
    open(out, "w"), sort_keys=False)
print(f"{len(dashboard['panels'])} panels on the grid; {len(queries)} queries and {len(rules)} alerts "
      f"use only the {len(known)} known metric names")
PY
"$promtool" check rules "$tmp/dashboard-rules.yaml"

for file in "${metrics_files[@]}"; do
  echo "== promtool check metrics < $file"
  complaints=$("$promtool" check metrics <"$file" 2>&1) || true
  if [ -n "$complaints" ]; then
    echo "$complaints" >&2
    echo "check-monitoring: promtool check metrics complains about $file" >&2
    exit 1
  fi
  # The names the dashboard and rules rely on must be in a scrape of the
  # process that serves them (a counter's or histogram's family may be
  # named without its suffix in # TYPE).
  "$python" - "$file" "${NODE_METRICS[*]}" "${OPT_IN_METRICS[*]}" "${WHEN_ANY_METRICS[*]}" \
    "${NODE_LOSS_METRICS[*]}" <<'PY'
import re, sys
path, node, opt_in, when_any, node_loss = sys.argv[1], *[set(a.split()) for a in sys.argv[2:]]
present = set()
for line in open(path):
    m = re.match(r"# TYPE (\S+) (\S+)", line) or re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
    if m:
        present.add(m.group(1))
def served(name):
    base = re.sub(r"_(total|bucket|sum|count)$", "", name)
    return name in present or base in present
expected = node if "hostpath_csi_build_info" in present else node_loss if any(
    n.startswith("hostpath_csi_node_loss_") for n in present) else None
if expected is None:
    sys.exit(f"{path}: neither a node plugin's scrape (hostpath_csi_build_info) nor the node-loss cleanup's")
missing = sorted(n for n in expected - when_any if not served(n))
if missing:
    sys.exit(f"{path}: the dashboard or alerts use names this scrape lacks: {', '.join(missing)}")
unseen = sorted(n for n in (expected & when_any) | (opt_in if expected is node else set()) if not served(n))
seen = len(expected) - len([n for n in unseen if n in expected])
note = f"; not in it (no series now, or opt-in): {', '.join(unseen)}" if unseen else ""
print(f"{path}: no complaint from promtool; has {seen} of the {len(expected)} names the dashboard and alerts use{note}")
PY
done
echo "check-monitoring: rules, their tests, the CRD objects and the dashboard are sound"
