# shellcheck shell=bash
# Sourced by e2e/inside.sh: Kubernetes' own External Storage suite
# (e2e.test, test/e2e/storage/external) against the cluster's hostpath-csi,
# once per driver description in e2e/ (docs/e2e.md says what each claims).
# JUnit reports go to target/e2e/junit/, the suite's output to $LOGS.

# The full run skips only what this cluster cannot run: the [Disruptive]
# specs stop and start kubelet with systemctl over SSH and containers with
# crictl, and this node has neither SSH nor systemd (scenario 6 restarts
# kubelet instead); "any volume data source" deploys hello-populator and
# volume-data-source-validator, whose images cannot be made here (the Go
# module proxy refuses both modules); "Pre-provisioned Snapshot" patterns
# make a VolumeSnapshotContent by hand, without the node label that
# distributed snapshotting (csi-snapshotter --node-deployment) hands each
# snapshot to its node by, so no snapshotter ever takes it; and, for
# kind=directory only, the restore "to larger size pvc" checks the size df
# shows, which for a directory on a pool without quotas is the pool's.
SUITE_FULL_SKIP='\[Disruptive\]|should provision storage with any volume data source|Pre-provisioned Snapshot|\[Driver: hostpath-csi\.dev\] \[Testpattern: Dynamic PV \(default fs\)\] provisioning should provision correct filesystem size when restoring snapshot to larger size pvc'
# The part CI runs: the test suites most worth guarding, without the specs
# marked disruptive, serial, flaky or behind a feature, nor those marked
# slow but volumeIO's (its only spec, writing and checksumming files of
# 1 MiB and 100 MiB, is marked slow) (docs/e2e.md).
SUITE_CI_FAST='provisioning|subPath|fsgroupchangepolicy|volumeMode|ephemeral|capacity|volume-expand'
SUITE_CI="volumeIO|$SUITE_CI_FAST"
SUITE_CI_SKIP="\\[Disruptive\\]|\\[Serial\\]|\\[Flaky\\]|Feature:|\\] ($SUITE_CI_FAST) .*\\[Slow\\]"

# run_suite ci|full: runs e2e.test once per description; fails if any spec
# failed.
run_suite() {
  local scope=$1 description name focus skip timeout status=0
  local junit=$E2E_OUT/junit
  rm -rf "$junit"
  mkdir -p "$junit"
  # kind=directory first: the default class, and the run docs/e2e.md records.
  for description in "$REPO"/e2e/test-driver.yaml "$REPO"/e2e/test-driver-*.yaml; do
    name=$(basename "$description" .yaml)
    # A hung spec fails CI's run long before CI's own limit.
    focus='External.Storage.*\[Driver: hostpath-csi\.dev\]' skip=$SUITE_FULL_SKIP timeout=3h
    if [ "$scope" = ci ]; then
      focus+=".*\\] ($SUITE_CI) " skip=$SUITE_CI_SKIP timeout=30m
    fi
    echo "== e2e: External Storage suite ($scope), $name"
    local began=$SECONDS
    # --ginkgo.fail-on-empty: a focus that selects nothing is a failure.
    # kubectl wrote the kubeconfig's certificate paths relative to its
    # directory, and e2e.test resolves them against its working directory.
    (cd "$PKI" && e2e.test --kubeconfig="$KUBECONFIG" --provider=local \
      --storage.testdriver="$description" --report-dir="$junit" --report-prefix="$name" \
      --ginkgo.focus="$focus" --ginkgo.skip="$skip" --ginkgo.fail-on-empty --ginkgo.no-color \
      --ginkgo.timeout="$timeout" --e2e-output-dir="$STATE") >"$LOGS/suite-$name.log" 2>&1 || status=1
    summarize_suite "$LOGS/suite-$name.log" "$name" $((SECONDS - began)) || status=1
  done
  return $status
}

# summarize_suite LOG NAME SECONDS: the counts of the JUnit report (specs
# that ran, and those skipped while running with each reason), and each
# failed spec's name; fails if the report says the run failed.
summarize_suite() {
  local report=$E2E_OUT/junit/junit_${2}01.xml
  if [ ! -s "$report" ]; then
    echo "== e2e: suite $2: FAILED (no report) in $3s; see $1"
    return 1
  fi
  local summary
  if ! summary=$("$REPO/e2e/junit-summary.py" "$report"); then
    echo "== e2e: suite $2: FAILED in $3s; see $1"
    [ -z "$summary" ] || echo "$summary" | tail -n +2
    return 1
  fi
  echo "$summary" | sed -e "1s/^/== e2e: suite $2: /" -e "1s/\$/ in $3s/"
}
