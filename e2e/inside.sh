#!/usr/bin/env bash
# Run by e2e/run.sh as PID 1 of fresh PID, mount, network and UTS
# namespaces: starts the cluster, runs every scenario and/or the External
# Storage suite, checks that they left no mount or loop device, and stops
# the cluster. When this process exits the kernel ends every process left
# in the namespaces and drops their mounts and network devices.
set -uo pipefail
REPO=$1 STATE=$2 LOGS=$3 RUN_SCENARIOS=$4 SUITE=$5 INSTALL=$6 HELM=$7
E2E_OUT=$REPO/target/e2e
export PATH="$E2E_OUT/bin:$PATH"
# shellcheck source=e2e/images.env
source "$REPO/e2e/images.env"
# shellcheck source=e2e/cluster.sh
source "$REPO/e2e/cluster.sh"
# shellcheck source=e2e/scenarios.sh
source "$REPO/e2e/scenarios.sh"
# shellcheck source=e2e/suite.sh
source "$REPO/e2e/suite.sh"

hostname "$NODE"
began=$SECONDS
if ! start_cluster; then
  echo "e2e: the cluster did not come up; see $LOGS" >&2
  stop_cluster
  exit 1
fi
echo "== e2e: cluster up in $((SECONDS - began))s (node $NODE Ready, driver registered)"

ok=true
if [ "$RUN_SCENARIOS" != yes ] && [ "$RUN_SCENARIOS" != no ]; then
  # Some scenarios only, named with commas (e2e/run.sh --scenario=NAME).
  IFS=, read -r -a SCENARIOS <<<"$RUN_SCENARIOS"
  RUN_SCENARIOS=yes
fi
if [ "$RUN_SCENARIOS" = yes ]; then
  passed=0
  for scenario in "${SCENARIOS[@]}"; do
    run_scenario "$scenario" && passed=$((passed + 1))
  done
  echo "== e2e: $passed of ${#SCENARIOS[@]} scenarios passed (installed with $INSTALL)"
  [ "$passed" = "${#SCENARIOS[@]}" ] || ok=false
fi
if [ "$SUITE" != none ]; then
  run_suite "$SUITE" || ok=false
fi

# With every scenario's and test's namespace deleted, no mount may be left
# under kubelet's directory but those of hostpath-csi's own pods, nor any
# loop device on a pool.
clean=true
own_pods=$(kubectl -n hostpath-csi get pods -o 'jsonpath={range .items[*]}{.metadata.uid}{"\n"}{end}')
leftovers=$(findmnt -rn -o TARGET | grep -E "^$KUBELET_DIR/pods/" | grep -v -F "${own_pods:-none}" || true)
if [ -n "$leftovers" ]; then
  echo "FAIL: mounts left under $KUBELET_DIR/pods:" >&2
  echo "$leftovers" >&2
  clean=false
fi
if losetup -a | grep /var/lib/hostpath-csi >&2; then
  echo "FAIL: loop devices left on the pools (above)" >&2
  clean=false
fi
stop_cluster
$ok && $clean
