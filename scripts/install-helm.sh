#!/usr/bin/env bash
# Prints the path of the Helm this repository uses (target/tools/bin/helm),
# building it first from the Go module proxy if it is missing or another
# version. Used by scripts/check-chart.sh and e2e/run.sh --install=helm.
set -euo pipefail
cd "$(dirname "$0")/.."

# The newest release the Go module proxy serves (go list -m -versions
# helm.sh/helm/v4). Its go.mod has no replace lines, so `go install` builds it.
HELM_VERSION=v4.3.2
bin=$PWD/target/tools/bin
if [ "$("$bin/helm" version --template '{{ .Version }}' 2>/dev/null)" != "$HELM_VERSION" ]; then
  echo "== installing helm $HELM_VERSION into target/tools/bin (go install)" >&2
  mkdir -p "$bin"
  # The version stamp Helm's own build sets (helm version, .Capabilities).
  GOBIN=$bin go install -ldflags "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >&2
fi
echo "$bin/helm"
