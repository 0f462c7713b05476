#!/usr/bin/env bash
# End-to-end on a real single-node Kubernetes — kubelet, containerd and the
# control plane built or installed here, hostpath-csi's DaemonSet and
# Deployment from deploy/kubernetes running as pods. Needs root.
#
#   e2e/run.sh                  the storage tutorial's scenarios
#   e2e/run.sh --suite=ci       the scenarios, then the part of Kubernetes'
#                               External Storage suite CI runs
#   e2e/run.sh --suite=full --no-scenarios
#                               the whole External Storage suite
#                               (e2e/storage-suite.sh)
#   e2e/run.sh --install=helm   the scenarios, hostpath-csi installed with
#                               the chart (helm install, e2e/helm-values.yaml)
#                               instead of kustomize (e2e/manifests)
#   --reuse-pieces              take target/e2e's binaries and images as the
#                               last run left them, if all are there, instead
#                               of building them again (scripts/test-all.sh's
#                               second run, right after its first)
#
# The pieces are cached in target/e2e (and Go's and cargo's caches), so only
# the first run builds Kubernetes. The cluster runs in new PID, mount,
# network and UTS namespaces: its mounts, interfaces and iptables rules are
# never the host's, and its processes all end with the namespaces. What it
# cannot keep to itself — cgroups under /sys/fs/cgroup/*/hostpath-e2e and
# the sysctls kubelet sets — is removed or restored here afterwards, and
# leftovers of any kind fail the run. Logs: target/e2e/logs/ (logs-helm/
# with --install=helm).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PATH="$(go env GOPATH)/bin:$HOME/.cargo/bin:$PATH"
export PATH
# shellcheck source=e2e/images.env
source "$REPO/e2e/images.env"
# shellcheck source=e2e/build.sh
source "$REPO/e2e/build.sh"
export CGROUP_ROOT=hostpath-e2e
# Host-wide sysctls kubelet sets at start (protectKernelDefaults: false).
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

SCENARIOS=yes SUITE=none INSTALL=kustomize REUSE=no
for arg in "$@"; do
  case $arg in
    --suite=ci | --suite=full | --suite=none) SUITE=${arg#--suite=} ;;
    --install=kustomize | --install=helm) INSTALL=${arg#--install=} ;;
    --reuse-pieces) REUSE=yes ;;
    --no-scenarios) SCENARIOS=no ;;
    --scenario=*) [ "$SCENARIOS" = yes ] && SCENARIOS=${arg#--scenario=} || SCENARIOS+=,${arg#--scenario=} ;;
    *)
      echo "usage: e2e/run.sh [--suite=ci|full|none] [--no-scenarios | --scenario=NAME...] [--install=kustomize|helm] [--reuse-pieces]" >&2
      exit 2
      ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  echo "e2e: must run as root (it runs kubelet and containerd)" >&2
  exit 1
fi

began=$SECONDS
packages="containerd runc etcd-server containernetworking-plugins busybox-static openssl iproute2 iptables util-linux procps curl python3"
missing=""
for package in $packages; do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=" $package"
done
if [ -n "$missing" ]; then
  echo "== e2e: installing$missing"
  apt-get update -qq
  # shellcheck disable=SC2086 # one package per word
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ "$REUSE" = yes ] && pieces_built; then
  echo "== e2e: Kubernetes, the sidecars, hostpath-csi and the images as the last run built them (--reuse-pieces)"
else
  build_binaries
  build_images
fi
[ "$SUITE" = none ] || build_suite
# The chart is installed with the Helm scripts/check-chart.sh uses.
[ "$INSTALL" = kustomize ] || HELM=$("$REPO/scripts/install-helm.sh")
echo "== e2e: pieces ready in $((SECONDS - began))s"

# What the host has before the cluster starts, to compare with afterwards.
# cluster_processes: the PIDs of the programs the cluster runs (ours, and
# Debian's containerd and etcd, which the host may run for itself too).
cluster_processes() {
  local exe
  for exe in /proc/[0-9]*/exe; do
    case "$(readlink "$exe" 2>/dev/null)" in
      "$E2E_BIN"/* | */etcd | */containerd | */containerd-shim-runc-v2 | */runc)
        exe=${exe#/proc/}
        echo "${exe%/exe}"
        ;;
    esac
  done
}
# firewall: the host's rules, counters aside (the cluster's live in its own
# network namespace and must not show up here).
firewall() {
  if command -v iptables-save >/dev/null; then
    iptables-save | { grep -v '^#' || true; } | sed 's/\[[0-9]*:[0-9]*\]//'
  fi
}
processes_before=$(cluster_processes)
sysctls_before=$(sysctl -e "${KUBELET_SYSCTLS[@]}")
firewall_before=$(firewall)

STATE=$(mktemp -d /tmp/hostpath-e2e.XXXXXX)
# Each install's logs apart, so that test-all's second run keeps the first's.
LOGS=$E2E_OUT/logs$([ "$INSTALL" = kustomize ] || echo "-$INSTALL")
rm -rf "$LOGS"
mkdir -p "$LOGS"

# cgroup_roots: kubelet's cgroupRoot in each hierarchy where it exists.
cgroup_roots() {
  local dir
  for dir in /sys/fs/cgroup/"$CGROUP_ROOT" /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
    if [ -d "$dir" ]; then echo "$dir"; fi
  done
}

# Undoes what the namespaces could not keep from the host. Failures are
# reported by the leftover checks below, not here.
restore_host() {
  echo "$sysctls_before" | while read -r key _ value; do
    sysctl -qw "$key=$value" || echo "e2e: could not restore $key" >&2
  done
  # The namespaces' processes may take a moment to finish dying after
  # their PID 1: a cgroup with tasks cannot be removed yet.
  local dir
  for _ in $(seq 50); do
    for dir in $(cgroup_roots); do
      find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
    [ -z "$(cgroup_roots)" ] && break
    sleep 0.1
  done
  rm -rf "$STATE"
}
trap restore_host EXIT

status=0
# --kill-child: should this script be killed, the namespaces go with it.
unshare --pid --fork --kill-child --mount-proc --mount --propagation private --net --uts \
  "$REPO/e2e/inside.sh" "$REPO" "$STATE" "$LOGS" "$SCENARIOS" "$SUITE" "$INSTALL" "${HELM:-}" || status=$?
restore_host
trap - EXIT

# Leftovers fail the run even when every scenario passed.
leftover=""
new_processes=$(comm -13 <(sort <<<"$processes_before") <(cluster_processes | sort))
[ -z "$new_processes" ] || leftover+=" processes:$(echo "$new_processes" | tr '\n' ' ')"
for dir in $(cgroup_roots); do
  leftover+=" cgroup:$dir"
done
# Every mount the cluster makes is in its mount namespace; the tmpfs mounts
# it names e2e-* must never be visible here.
mounts=$(findmnt -rn -o SOURCE,TARGET | grep -E "^e2e-|$STATE" || true)
[ -z "$mounts" ] || leftover+=" mounts:$(echo "$mounts" | tr '\n' ' ')"
loops=$(losetup -a | grep -E "$STATE|hostpath-csi" || true)
[ -z "$loops" ] || leftover+=" loop-devices:$loops"
if ip link show cni0 >/dev/null 2>&1; then leftover+=" interface:cni0"; fi
[ "$(firewall)" = "$firewall_before" ] || leftover+=" iptables-rules"
[ "$(sysctl -e "${KUBELET_SYSCTLS[@]}")" = "$sysctls_before" ] || leftover+=" sysctls"
if [ -n "$leftover" ]; then
  echo "e2e: left behind on the host:$leftover" >&2
  status=1
fi
echo "== e2e: $([ $status = 0 ] && echo passed || echo FAILED) in $((SECONDS - began))s (logs: $LOGS)"
exit $status
