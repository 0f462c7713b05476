#!/usr/bin/env bash
# Run by e2e/run.sh as PID 1 of fresh PID, mount, network and UTS
# namespaces: starts the cluster, runs every scenario, deletes what they
# made, checks that no mount or loop device of theirs is left, and stops the
# cluster. When this process exits the kernel ends every process left in the
# namespaces and drops their mounts and network devices.
set -uo pipefail
REPO=$1 STATE=$2 LOGS=$3
export PATH="$REPO/target/e2e/bin:$PATH"
source "$REPO/e2e/images.env"
source "$REPO/e2e/cluster.sh"
source "$REPO/e2e/scenarios.sh"
E2E_OUT=$REPO/target/e2e

hostname "$NODE"
began=$SECONDS
if ! start_cluster; then
  echo "e2e: the cluster did not come up; see $LOGS" >&2
  stop_cluster
  exit 1
fi
echo "== e2e: cluster up in $((SECONDS - began))s (node $NODE Ready, driver registered)"

failed=0
for scenario in "${SCENARIOS[@]}"; do
  run_scenario "$scenario" || failed=$((failed + 1))
done

# What all scenarios leave: no CSI mount under kubelet's directory, no loop
# device, no volume in the pools but the retained one.
leftovers=$(findmnt -rn -o TARGET | grep -E "^$KUBELET_DIR/pods/" || true)
if [ -n "$leftovers" ]; then
  echo "FAIL: mounts left under $KUBELET_DIR/pods:" >&2
  echo "$leftovers" >&2
  failed=$((failed + 1))
fi
if losetup -a | grep -q /var/lib/hostpath-csi; then
  echo "FAIL: loop devices left: $(losetup -a)" >&2
  failed=$((failed + 1))
fi
stop_cluster
echo "== e2e: $((${#SCENARIOS[@]} - failed)) of ${#SCENARIOS[@]} scenarios passed"
[ "$failed" = 0 ]
