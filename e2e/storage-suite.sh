#!/usr/bin/env bash
# Kubernetes' whole External Storage suite (e2e.test) against hostpath-csi
# on the e2e cluster, one run per driver description (e2e/test-driver*.yaml).
# Needs root; builds what is missing, tears everything down, fails on any
# failed spec or leftover (e2e/run.sh). JUnit: target/e2e/junit/.
exec "$(dirname "$0")/run.sh" --suite=full --no-scenarios
