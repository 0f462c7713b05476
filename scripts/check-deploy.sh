#!/usr/bin/env bash
# Checks what can be checked without a cluster or a Docker engine: each
# manifest under deploy/ validates strictly against the oldest and newest
# Kubernetes minor we support; every command line the manifests give
# hostpath-csi or hostpath-csi-node-loss is accepted by that binary; the
# Dockerfile builds both binaries (the node loss cleanup with its feature)
# and copies them, and installs Debian packages that exist.
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

manifests=$(find deploy -name '*.yaml' ! -name kustomization.yaml | sort)
for version in "$OLDEST" "$NEWEST"; do
  echo "== kubernetes-validate --strict, Kubernetes $version"
  # shellcheck disable=SC2086
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" $manifests
done

# kubernetes-validate knows no custom resources: the snapshot objects are
# checked against the CRDs of the external-snapshotter release the
# DaemonSet's csi-snapshotter comes from, rejecting unknown fields too.
SNAPSHOTTER_CLIENT=github.com/kubernetes-csi/external-snapshotter/client/v8@v8.7.0
echo "== snapshot objects against the CRDs of $SNAPSHOTTER_CLIENT"
crds=$(go mod download -json "$SNAPSHOTTER_CLIENT" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')/config/crd
# shellcheck disable=SC2086
"$venv/bin/python" - "$crds" $manifests <<'PY'
import glob, sys, jsonschema, yaml
crd_dir, files = sys.argv[1], sys.argv[2:]
schemas = {}
for path in glob.glob(f"{crd_dir}/snapshot.storage.k8s.io_*.yaml"):
    crd = yaml.safe_load(open(path))
    for version in crd["spec"]["versions"]:
        key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
        schemas[key] = version["schema"]["openAPIV3Schema"]
def unknown(value, schema, at):
    if isinstance(value, dict) and "properties" in schema:
        for key, inner in value.items():
            if key not in schema["properties"]:
                if key != "metadata" or at:
                    yield f"{at}.{key}"
            else:
                yield from unknown(inner, schema["properties"][key], f"{at}.{key}")
checked = 0
for path in files:
    for doc in yaml.safe_load_all(open(path)):
        key = ((doc or {}).get("apiVersion"), (doc or {}).get("kind"))
        if key[0] and key[0].startswith("snapshot.storage.k8s.io/"):
            if key not in schemas:
                sys.exit(f"{path}: no CRD for {key}")
            jsonschema.validate(doc, schemas[key])
            extra = list(unknown(doc, schemas[key], ""))
            if extra:
                sys.exit(f"{path}: unknown fields {extra}")
            checked += 1
print(f"{checked} snapshot objects valid")
if checked == 0:
    sys.exit("no snapshot object found under deploy/")
PY

echo "== hostpath-csi accepts the command lines of deploy/"
"$venv/bin/python" - "$driver_bin" $manifests <<'PY'
import os, re, subprocess, sys, yaml
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
            # A container with a command runs that binary of the image, found
            # beside the one given (the Dockerfile puts them together).
            command = container.get("command") or [binary]
            program = os.path.join(os.path.dirname(binary), os.path.basename(command[0]))
            # --help last: clap rejects any unknown or malformed flag before it.
            run = subprocess.run([program, *command[1:], *args, "--help"], capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{path}: {container['name']}: {run.stderr.strip()}")
            checked += 1
print(f"{checked} hostpath-csi command lines accepted")
if checked == 0:
    sys.exit("no hostpath-csi container found under deploy/")
PY

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
