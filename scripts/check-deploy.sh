#!/usr/bin/env bash
# Checks what can be checked without a cluster or a Docker engine: each
# manifest under deploy/ validates strictly against the oldest and newest
# Kubernetes minor we support; every command line the manifests give
# hostpath-csi is accepted by the binary; the Dockerfile copies the binary
# `cargo build --release --locked` makes and installs Debian packages that exist.
# Usage: scripts/check-deploy.sh path/to/hostpath-csi
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

manifests=$(find deploy -name '*.yaml' ! -name kustomization.yaml | sort)
for version in "$OLDEST" "$NEWEST"; do
  echo "== kubernetes-validate --strict, Kubernetes $version"
  # shellcheck disable=SC2086
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" $manifests
done

echo "== hostpath-csi accepts the command lines of deploy/"
"$venv/bin/python" - "$driver_bin" $manifests <<'PY'
import re, subprocess, sys, yaml
binary, files = sys.argv[1], sys.argv[2:]
checked = 0
for path in files:
    for doc in yaml.safe_load_all(open(path)):
        spec = (doc or {}).get("spec", {})
        pod = spec.get("template", {}).get("spec", {}) if "template" in spec else spec
        for container in pod.get("containers", []) or []:
            if not container.get("image", "").startswith("hostpath-csi:"):
                continue
            # $(VAR) is expanded by the kubelet from the container's env; a
            # field reference gets a value of the kind the kubelet would put.
            sample = {"spec.nodeName": "node-1", "status.podIP": "192.0.2.7"}
            env = {e["name"]: sample.get(e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath"), e.get("value", ""))
                   for e in container.get("env", [])}
            args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
                    for a in container.get("args", [])]
            # --help last: clap rejects any unknown or malformed flag before it.
            run = subprocess.run([binary, *args, "--help"], capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{path}: {container['name']}: {run.stderr.strip()}")
            checked += 1
print(f"{checked} hostpath-csi command lines accepted")
if checked == 0:
    sys.exit("no hostpath-csi container found under deploy/")
PY

echo "== Dockerfile"
grep -q '^RUN cargo build --release --locked$' Dockerfile
grep -q '^COPY --from=build /src/target/release/hostpath-csi ' Dockerfile
grep -q '^name = "hostpath-csi"$' Cargo.toml
packages=$(sed -n 's/.*apt-get install -y --no-install-recommends \([a-z0-9 .+-]*\).*/\1/p' Dockerfile)
[ -n "$packages" ] || { echo "Dockerfile installs no runtime packages?" >&2; exit 1; }
apt-cache show e2fsprogs >/dev/null 2>&1 || apt-get update -qq
for package in $packages; do
  apt-cache show "$package" >/dev/null || { echo "Dockerfile: no Debian package $package" >&2; exit 1; }
done
echo "Dockerfile: release binary copied; Debian packages exist: $packages"
