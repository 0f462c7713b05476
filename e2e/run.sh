#!/usr/bin/env bash
# End-to-end: the storage tutorial's scenarios on a real single-node
# Kubernetes — kubelet, containerd and the control plane built or installed
# here, our driver and its sidecars beside them. Needs root.
#
#   e2e/run.sh            build what is missing, run every scenario, tear down
#
# The pieces are cached in target/e2e (and Go's and cargo's caches), so only
# the first run builds Kubernetes. The cluster runs in new PID, mount,
# network and UTS namespaces: its mounts, interfaces and iptables rules are
# never the host's, and its processes all end with the namespaces. What it
# cannot keep to itself — cgroups under /sys/fs/cgroup/*/hostpath-e2e and
# the sysctls kubelet sets — is removed or restored here afterwards, and
# leftovers of any kind fail the run. Logs: target/e2e/logs/.
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

if [ "$(id -u)" != 0 ]; then
  echo "e2e: must run as root (it runs kubelet and containerd)" >&2
  exit 1
fi

began=$SECONDS
packages="containerd runc etcd-server containernetworking-plugins busybox-static openssl iproute2 util-linux"
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
build_binaries
build_images
echo "== e2e: pieces ready in $((SECONDS - began))s"

STATE=$(mktemp -d /tmp/hostpath-e2e.XXXXXX)
LOGS=$E2E_OUT/logs
rm -rf "$LOGS"
mkdir -p "$LOGS"
sysctls_before=$(sysctl -e "${KUBELET_SYSCTLS[@]}")
# The host's firewall rules, counters aside (the cluster's live in its own
# network namespace and must not show up here).
firewall() {
  if command -v iptables-save >/dev/null; then
    iptables-save | { grep -v '^#' || true; } | sed 's/\[[0-9]*:[0-9]*\]//'
  fi
}
firewall_before=$(firewall)

restore_host() {
  # Everything inside has ended with the namespaces' PID 1; what is left
  # on the host is undone here.
  echo "$sysctls_before" | while read -r key _ value; do sysctl -qw "$key=$value"; done
  local dir
  for dir in /sys/fs/cgroup/"$CGROUP_ROOT" /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
    [ -d "$dir" ] && find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  rm -rf "$STATE"
}
trap restore_host EXIT

status=0
unshare --pid --fork --mount-proc --mount --propagation private --net --uts \
  "$REPO/e2e/inside.sh" "$REPO" "$STATE" "$LOGS" || status=$?
restore_host
trap - EXIT

# Leftovers fail the run even when every scenario passed.
leftover=""
for exe in /proc/[0-9]*/exe; do
  exe=$(readlink "$exe" 2>/dev/null) || continue
  case "$exe" in
    "$E2E_BIN"/* | */etcd | */containerd | */containerd-shim-runc-v2) leftover+=" process:$exe" ;;
  esac
done
ls -d /sys/fs/cgroup/"$CGROUP_ROOT" /sys/fs/cgroup/*/"$CGROUP_ROOT" 2>/dev/null && leftover+=" cgroups"
findmnt -rn -o TARGET | grep -q "$STATE" && leftover+=" mounts"
losetup -a | grep -qE "$STATE|hostpath-csi" && leftover+=" loop-devices"
ip link show cni0 >/dev/null 2>&1 && leftover+=" interface-cni0"
[ "$(firewall)" = "$firewall_before" ] || leftover+=" iptables-rules"
[ "$(sysctl -e "${KUBELET_SYSCTLS[@]}")" = "$sysctls_before" ] || leftover+=" sysctls"
if [ -n "$leftover" ]; then
  echo "e2e: left behind on the host:$leftover" >&2
  status=1
fi
echo "== e2e: $([ $status = 0 ] && echo passed || echo FAILED) in $((SECONDS - began))s (logs: $LOGS)"
exit $status
