#!/usr/bin/env bash
# Checks what can be checked without a cluster or a Docker engine: each
# manifest under deploy/ validates strictly against the oldest and newest
# Kubernetes minor we support (a kind it has no schema for fails, but for
# the custom resources of scripts/manifest_checks.py's CRD_GROUPS); every
# command line the manifests give hostpath-csi or hostpath-csi-node-loss is
# accepted by that binary; the Dockerfile builds both binaries (the node
# loss cleanup with its feature) and copies them, and installs Debian
# packages that exist. The Helm chart under charts/ has checks of its own:
# scripts/check-chart.sh.
# Usage: scripts/check-deploy.sh path/to/hostpath-csi (hostpath-csi-node-loss beside it)
set -euo pipefail
cd "$(dirname "$0")/.."
driver_bin=$(realpath "$1")

OLDEST=1.30.0
NEWEST=1.37.0
VALIDATOR=kubernetes-validate==1.37.0
venv=${HOSTPATH_CSI_VENV:-target/deploy-venv}
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "== installing $VALIDATOR"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$VALIDATOR"
fi

# deploy/monitoring (the Prometheus Operator's objects, promtool's tests) is
# scripts/check-monitoring.sh's.
manifests=$(find deploy -path deploy/monitoring -prune -o -name '*.yaml' ! -name kustomization.yaml -print | sort)
checks() { "$venv/bin/python" scripts/manifest_checks.py "$@"; }
for version in "$OLDEST" "$NEWEST"; do
  echo "== kubernetes-validate --strict, Kubernetes $version"
  # shellcheck disable=SC2086 # one file per word
  checks kubernetes-validate "$version" $manifests
done

# kubernetes-validate knows no custom resources: the snapshot objects are
# checked against the CRDs of the external-snapshotter release the
# DaemonSet's csi-snapshotter comes from, rejecting unknown fields too.
SNAPSHOTTER_CLIENT=github.com/kubernetes-csi/external-snapshotter/client/v8@v8.7.0
echo "== snapshot objects against the CRDs of $SNAPSHOTTER_CLIENT"
crds=$(go mod download -json "$SNAPSHOTTER_CLIENT" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')/config/crd
# shellcheck disable=SC2086 # one file per word
checks custom-resources snapshot.storage.k8s.io "$crds" $manifests

echo "== hostpath-csi accepts the command lines of deploy/"
# shellcheck disable=SC2086 # one file per word
checks command-lines "$driver_bin" $manifests

echo "== deploy/kubernetes: Leases read and updated by name only, the names the controller uses"
checks lease-names deploy/kubernetes/*.yaml

echo "== Dockerfile"
grep -q '^RUN cargo build --release --locked --bin hostpath-csi \\$' Dockerfile
grep -q '^ && cargo build --release --locked --features node-loss --bin hostpath-csi-node-loss$' Dockerfile
for bin in hostpath-csi hostpath-csi-node-loss; do
  grep -q "^COPY --from=build /src/target/release/$bin /usr/local/bin/$bin\$" Dockerfile
  grep -q "^name = \"$bin\"\$" Cargo.toml
done
packages=$(sed -n 's/.*apt-get install -y --no-install-recommends \([a-z0-9 .+-]*\).*/\1/p' Dockerfile)
[ -n "$packages" ] || { echo "Dockerfile installs no runtime packages?" >&2; exit 1; }
apt-cache show e2fsprogs >/dev/null 2>&1 || apt-get update -qq
for package in $packages; do
  apt-cache show "$package" >/dev/null || { echo "Dockerfile: no Debian package $package" >&2; exit 1; }
done
echo "Dockerfile: release binaries copied; Debian packages exist: $packages"
# Nothing here runs `docker build`, so the image's Rust is checked against
# what the dependency tree asks: the build stage's toolchain must be at
# least the highest `rust-version` of any package the image builds, features
# included (Cargo.lock's versions).
toolchain=$(sed -n 's/^FROM rust:\([0-9][0-9.]*\)-.* AS build$/\1/p' Dockerfile)
[ -n "$toolchain" ] || { echo "Dockerfile: no FROM rust:X.Y-… AS build line" >&2; exit 1; }
cargo metadata --locked --all-features --format-version 1 | python3 -c '
import json, sys
toolchain = tuple(int(p) for p in sys.argv[1].split("."))
def version(text):
    return tuple(int(p) for p in text.split("."))
packages = json.load(sys.stdin)["packages"]
asks = [(version(p["rust_version"]), p["name"], p["version"]) for p in packages if p.get("rust_version")]
highest = max(asks)
shown = ".".join(map(str, highest[0]))
if highest[0][: len(toolchain)] > toolchain:
    sys.exit(f"Dockerfile: rust {sys.argv[1]} is older than the {shown} that {highest[1]} {highest[2]} asks for")
print(f"Dockerfile: rust {sys.argv[1]} satisfies every rust-version in the tree (highest: {shown}, {highest[1]} {highest[2]}; {len(asks)} packages state one)")
' "$toolchain"
