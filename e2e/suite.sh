# shellcheck shell=bash
# Sourced by e2e/inside.sh: Kubernetes' own External Storage suite
# (e2e.test, test/e2e/storage/external) against the cluster's hostpath-csi,
# once per driver description in e2e/ (docs/e2e.md says what each claims).
# JUnit reports go to target/e2e/junit/, the suite's output to $LOGS.

# Specs that cannot run on this cluster: they need several nodes, change
# the cluster for everyone, or are marked slow, flaky or behind a feature
# gate (docs/e2e.md lists the groups).
SUITE_SKIP='\[Disruptive\]|\[Serial\]|\[Slow\]|\[Flaky\]|Feature:'
# The part CI runs: the test suites most worth guarding (docs/e2e.md).
SUITE_CI='provisioning|subPath|volumeIO|fsgroupchangepolicy|volumeMode|ephemeral|capacity|volume-expand'

# run_suite ci|full: runs e2e.test once per description; fails if any spec
# failed.
run_suite() {
  local scope=$1 description name focus status=0
  local junit=$E2E_OUT/junit
  rm -rf "$junit"
  mkdir -p "$junit"
  for description in "$REPO"/e2e/test-driver*.yaml; do
    name=$(basename "$description" .yaml)
    focus='External.Storage.*\[Driver: hostpath-csi\.dev\]'
    [ "$scope" = full ] || focus+=".*\\] ($SUITE_CI) "
    echo "== e2e: External Storage suite ($scope), $name"
    local began=$SECONDS
    # e2e.test resolves the kubeconfig's certificate paths against its
    # working directory.
    (cd "$PKI" && e2e.test --kubeconfig="$KUBECONFIG" --provider=local \
      --storage.testdriver="$description" --report-dir="$junit" --report-prefix="$name" \
      --ginkgo.focus="$focus" --ginkgo.skip="$SUITE_SKIP" --ginkgo.no-color \
      --ginkgo.timeout=3h --e2e-output-dir="$STATE") >"$LOGS/suite-$name.log" 2>&1 || status=1
    summarize_suite "$LOGS/suite-$name.log" "$name" $((SECONDS - began))
  done
  return $status
}

# summarize_suite LOG NAME SECONDS: the counts of the JUnit report (specs
# that ran, and those skipped while running with each reason), and each
# failed spec's name.
summarize_suite() {
  local report=$E2E_OUT/junit/junit_${2}01.xml
  if [ ! -s "$report" ]; then
    echo "== e2e: suite $2: no report in $3s; see $1"
    return
  fi
  "$REPO/e2e/junit-summary.py" "$report" | sed -e "1s/^/== e2e: suite $2: /" -e "1s/\$/ in $3s/"
}
