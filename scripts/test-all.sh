#!/usr/bin/env bash
# Runs every test of hostpath-csi on this machine (as root: tests mount):
# format and lint checks, `cargo test` (unit + integration over a real socket
# with real mounts and loop devices), the checks of deploy/, the Helm chart
# and the Dockerfile, then csi-sanity against a freshly started driver for
# each kind, then the tutorial's scenarios and part of Kubernetes' External Storage
# suite on a real single-node Kubernetes running the DaemonSet and the
# Deployment (e2e/run.sh --suite=ci, which builds or reuses Kubernetes,
# e2e.test and the images, and installs containerd, runc, etcd and the CNI
# plugins from Debian; docs/e2e.md), and the scenarios once more with
# hostpath-csi installed by the Helm chart (e2e/run.sh --install=helm).
# The tests of kernel features this host may lack or forbid (project quotas,
# growing a mounted ext4) run a second time in a virtual machine booted from
# Debian's kernel (scripts/vm-test.sh), where they must pass in full.
# Installs what is missing (csi-sanity and promtool by `go install`;
# e2fsprogs, xfsprogs, btrfs-progs, and for the VM qemu-system-x86,
# busybox-static and the kernel package, by apt; kubernetes-validate and
# grpcio by pip into target/; helm by `go install` into target/tools/bin).
# Any failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

CSI_SANITY_MODULE=github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity
CSI_SANITY_VERSION=v5.6.0
GOBIN_DIR="$(go env GOPATH)/bin"
export PATH="$GOBIN_DIR:$HOME/.cargo/bin:$PATH"

if [ "$(id -u)" != 0 ]; then
  echo "test-all: must run as root (the tests make real mounts)" >&2
  exit 1
fi

# kind=file formats and grows images with e2fsprogs and xfsprogs (the driver
# runs them by argv); the btrfs tests make their pool with btrfs-progs.
if ! command -v mkfs.ext4 >/dev/null || ! command -v mkfs.xfs >/dev/null \
  || ! command -v xfs_growfs >/dev/null || ! command -v mkfs.btrfs >/dev/null; then
  echo "== installing e2fsprogs, xfsprogs and btrfs-progs"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs xfsprogs btrfs-progs
fi

if ! go version -m "$GOBIN_DIR/csi-sanity" 2>/dev/null | grep -q "$CSI_SANITY_VERSION"; then
  echo "== installing csi-sanity $CSI_SANITY_VERSION"
  go install "$CSI_SANITY_MODULE@$CSI_SANITY_VERSION"
fi

# tests/clients.rs talks to the driver with Python's grpcio (gRPC C-core),
# as a new user would; it lives in a venv of its own under target/.
if ! target/grpc-venv/bin/python -c 'import grpc' 2>/dev/null; then
  echo "== installing grpcio into target/grpc-venv"
  rm -rf target/grpc-venv
  python3 -m venv target/grpc-venv
  target/grpc-venv/bin/pip install -q grpcio==1.85.3
fi

# A build from a clean clone gains nothing from incremental state, which
# would take gigabytes of the disk (with Cargo.toml's small dev profile the
# whole cargo part takes about 2.5 GB).
export CARGO_INCREMENTAL=0
echo "== disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free here before the build"

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets --features failpoints,node-loss -- -D warnings"
cargo clippy --locked --all-targets --features failpoints,node-loss -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The test build has failpoints (the crash tests kill the driver at each);
# the binary csi-sanity and the deploy check use is built without them.
echo "== cargo test --features failpoints,node-loss"
cargo test --locked --features failpoints,node-loss 2>&1 | tee "$log"
cargo build --locked --features node-loss
echo "== the same kernel-dependent tests in a VM with Debian's kernel"
vm_tests=$(cargo test --locked --features failpoints,node-loss --no-run --test project_quota --test expansion \
  --message-format=json \
  | grep -oE '"executable":"[^"]+/deps/[^"]+"' | cut -d'"' -f4)
# shellcheck disable=SC2086 # one test binary per word
scripts/vm-test.sh $vm_tests 2>&1 | tee -a "$log"
echo "== deploy/ manifests"
scripts/check-deploy.sh target/debug/hostpath-csi
echo "== deploy/monitoring: alert rules and their tests, Prometheus Operator objects, dashboard queries"
# The pages the real driver and the node loss cleanup served in cargo test
# (tests/metrics.rs, tests/node_loss.rs keep them) are linted by promtool.
scripts/check-monitoring.sh --metrics target/tmp/metrics-scrape.prom \
  --metrics target/tmp/node-loss-scrape.prom
echo "== charts/hostpath-csi"
scripts/check-chart.sh target/debug/hostpath-csi
sanity() {
  echo "== csi-sanity, kind=$*"
  scripts/sanity.sh target/debug/hostpath-csi "$@" 2>&1 | tee -a "$log"
}
sanity directory
sanity memory
sanity file
sanity file --csi.testvolumeaccesstype block --csi.testvolumesize $((8 << 20)) \
  --csi.testvolumeexpandsize $((16 << 20))
echo "== end-to-end: the tutorial's scenarios and the External Storage suite (ci) on a real Kubernetes node"
e2e/run.sh --suite=ci 2>&1 | tee -a "$log"
echo "== end-to-end again: the tutorial's scenarios, hostpath-csi installed with the Helm chart"
e2e/run.sh --install=helm --reuse-pieces 2>&1 | tee -a "$log"

# One closing line over both runners (pipefail has already stopped on any failure).
plain=$(sed 's/\x1b\[[0-9;]*m//g' "$log")
sum() { grep -oE "[0-9]+ $1" <<<"$2" | awk '{n += $1} END {print n + 0}'; }
cargo_lines=$(grep '^test result:' <<<"$plain" || true)
sanity_lines=$(grep -E '^(SUCCESS|FAIL)! -- [0-9]+ Passed \| [0-9]+ Failed' <<<"$plain" || true)
# One line per e2e run ("== e2e: P of N scenarios passed (installed with …)").
e2e_lines=$(grep -E '^== e2e: [0-9]+ of [0-9]+ scenarios passed' <<<"$plain" || true)
e2e_passed=$(awk '{n += $3} END {print n + 0}' <<<"$e2e_lines")
e2e_failed=$(( $(awk '{n += $5} END {print n + 0}' <<<"$e2e_lines") - e2e_passed ))
# The suite's specs from its JUnit summary: those that ran, and those it
# skipped while running (ginkgo's own count of skipped specs includes every
# spec its focus left out, so it is not used).
suite_lines=$(grep -E '^== e2e: suite ' <<<"$plain" || true)
passed=$(( $(sum passed "$cargo_lines") + $(sum Passed "$sanity_lines") + e2e_passed + $(sum Passed "$suite_lines") ))
failed=$(( $(sum failed "$cargo_lines") + $(sum Failed "$sanity_lines") + e2e_failed + $(sum Failed "$suite_lines") ))
skipped=$(( $(sum ignored "$cargo_lines") + $(sum Skipped "$sanity_lines") + $(sum Skipped "$suite_lines") ))
cat target/reliability-crash.txt target/reliability-soak.txt target/reliability-hostile.txt
echo "csi-sanity runs:"
sed 's/^/  /' <<<"$sanity_lines"
echo "end-to-end:"
sed 's/^== e2e: /  /' <<<"$e2e_lines"
echo "External Storage suite:"
sed 's/^== e2e: suite /  /' <<<"$suite_lines"
echo "total: $passed passed, $failed failed, $skipped skipped"
