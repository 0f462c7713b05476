#!/usr/bin/env bash
# Checks the Helm chart charts/hostpath-csi without a cluster: `helm lint
# --strict` with each values file; the chart rendered with its defaults, with
# namespace.create=true, with each charts/hostpath-csi/ci/*-values.yaml and
# with e2e/helm-values.yaml validates strictly against the oldest and newest
# Kubernetes minor we support (snapshot objects, in the renders that have
# them, against their CRDs); the defaults with namespace.create=true are the
# same objects as the kustomize bases deploy/kubernetes + deploy/snapshots,
# but for the labels Helm adds; with metrics.podMonitor.enabled its
# PodMonitors are deploy/monitoring's, validate against the Prometheus
# Operator's CRDs and, for another release name too, select the release's
# pods and their metrics port; with metrics.prometheusRule.enabled its
# PrometheusRule is deploy/monitoring's and validates too, also from the
# packaged chart (`helm package`, which must carry the linked rules file);
# every render's Roles name the Leases its controller uses, and only those;
# in every render, no node can run two node plugins and a node labelled for
# a poolsByNodeLabel group runs its group's;
# and, given the driver's binary, every hostpath-csi command line of every
# render is accepted by it.
# Installs helm (scripts/install-helm.sh) and kubernetes-validate (into the
# venv scripts/check-deploy.sh uses) if missing.
# Usage: scripts/check-chart.sh [path/to/hostpath-csi (hostpath-csi-node-loss beside it)]
set -euo pipefail
cd "$(dirname "$0")/.."
driver_bin=${1:+$(realpath "$1")}

CHART=charts/hostpath-csi
RELEASE=hostpath-csi
NAMESPACE=hostpath-csi
OLDEST=1.30.0
NEWEST=1.37.0
VALIDATOR=kubernetes-validate==1.37.0
SNAPSHOTTER_CLIENT=github.com/kubernetes-csi/external-snapshotter/client/v8@v8.7.0
# The Prometheus Operator release deploy/monitoring is checked against.
OPERATOR=$(sed -n 's/^OPERATOR=//p' scripts/check-monitoring.sh)
venv=${HOSTPATH_CSI_VENV:-target/deploy-venv}
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "== installing $VALIDATOR"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$VALIDATOR"
fi
helm=$(scripts/install-helm.sh)
checks() { "$venv/bin/python" scripts/manifest_checks.py "$@"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# render NAME [helm flags]: $work/NAME.yaml, after `helm lint --strict` with
# the same values; a RELEASE=… before the call names another release. Helm's
# notice that files/prometheusrule.yaml is a link (it is, on purpose) is
# left out of the output.
render() {
  local name=$1
  shift
  echo "== $name: helm lint --strict, helm template"
  "$helm" lint --strict --quiet "$CHART" --namespace "$NAMESPACE" "$@" 2> >(but_links >&2)
  "$helm" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "$@" >"$work/$name.yaml" \
    2> >(but_links >&2)
}
but_links() { grep -v 'msg="found symbolic link in path' || true; }
render defaults
# What deploy/kubernetes has: the Namespace too (`helm install` makes it).
render with-namespace --set namespace.create=true
monitoring=(--set metrics.podMonitor.enabled=true --set metrics.prometheusRule.enabled=true)
render monitoring "${monitoring[@]}"
RELEASE=storage render monitoring-other-release "${monitoring[@]}"
# As a chart repository serves it: files/prometheusrule.yaml is a link, and
# the package must hold the rules themselves.
"$helm" package "$CHART" --destination "$work/package" >/dev/null 2> >(but_links >&2)
CHART=$(echo "$work"/package/hostpath-csi-*.tgz) render monitoring-packaged "${monitoring[@]}"
for values in "$CHART"/ci/*-values.yaml e2e/helm-values.yaml; do
  render "$(basename "$values" .yaml)" --values "$values"
done
renders=$(find "$work" -name '*.yaml' | sort)

for version in "$OLDEST" "$NEWEST"; do
  echo "== kubernetes-validate --strict, Kubernetes $version"
  # Every kind but the VolumeSnapshotClass, checked against its CRD below.
  # shellcheck disable=SC2086 # one file per word
  checks kubernetes-validate "$version" $renders
done

echo "== snapshot objects against the CRDs of $SNAPSHOTTER_CLIENT"
crds=$(go mod download -json "$SNAPSHOTTER_CLIENT" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')/config/crd
for file in $renders; do
  printf '%s: ' "$(basename "$file" .yaml)"
  if grep -q '^kind: VolumeSnapshotClass$' "$file"; then
    checks custom-resources snapshot.storage.k8s.io "$crds" "$file"
  else
    echo "no snapshot objects (snapshotClass.enabled: false)"
  fi
done

echo "== the default render (namespace.create=true) against deploy/kubernetes + deploy/snapshots"
checks same-objects "$work/with-namespace.yaml" deploy/kubernetes deploy/snapshots

echo "== PodMonitors and PrometheusRules: against the CRDs of $OPERATOR, deploy/monitoring's, selecting the release's pods"
crds=$(go mod download -json "$OPERATOR" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')/example/prometheus-operator-crd
# shellcheck disable=SC2086 # one file per word
monitoring_renders=$(grep -lE '^kind: (PodMonitor|PrometheusRule)$' $renders)
# shellcheck disable=SC2086
checks custom-resources monitoring.coreos.com "$crds" $monitoring_renders
for render in monitoring monitoring-packaged; do
  for kind in PodMonitor PrometheusRule; do
    checks same-objects --kind=$kind "$work/$render.yaml" deploy/monitoring
  done
done
# shellcheck disable=SC2086
monitors=$(grep -l '^kind: PodMonitor$' $renders)
# shellcheck disable=SC2086
checks monitors-select $monitors

echo "== Leases read and updated by name only, the names the controller uses (each render)"
for file in $renders; do
  printf '%s: ' "$(basename "$file" .yaml)"
  checks lease-names "$file"
done

echo "== node plugin DaemonSets: at most one per node, a pool group's node its group's (each render)"
# shellcheck disable=SC2086 # one file per word
checks node-plugins $renders

if [ -n "$driver_bin" ]; then
  echo "== hostpath-csi accepts the command lines of every render"
  # shellcheck disable=SC2086 # one file per word
  checks command-lines "$driver_bin" $renders
fi
