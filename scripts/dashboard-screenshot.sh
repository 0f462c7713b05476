#!/usr/bin/env bash
# A picture of deploy/monitoring/dashboard.json filled with real data, for
# the docs, without Grafana: scrapes running drivers with a Prometheus of its
# own (every 2 s) while a load command runs, then draws the dashboard from
# its own queries (scripts/dashboard-preview.py) and takes a screenshot of
# that page with headless Chromium. Installs Debian's prometheus (unpacked
# into target/tools, so no service is started) and chromium if missing.
#
# Usage: scripts/dashboard-screenshot.sh --target HOST:PORT[=NODE] [--target ...]
#          --out docs/dashboard.png [--html FILE] [--port 19090] [--settle 10]
#          [--seconds 60 | -- LOAD COMMAND...]
# Each --target is a metrics address (a node plugin's --metrics-address, or
# hostpath-csi-node-loss's), scraped with the label node=NODE (default: its
# address), as the PodMonitor labels them. With a command after `--`, the
# range shown is its run (plus --settle seconds of scrapes after it); without
# one, --seconds of scrapes. E.g.:
#   scripts/dashboard-screenshot.sh --target 127.0.0.1:9809=node-1 --out docs/dashboard.png \
#     -- target/release/examples/load_bench --endpoint unix:///run/hostpath-csi/csi.sock
set -euo pipefail
cd "$(dirname "$0")/.."

targets=() out="" html="" port=19090 settle=10 seconds=60
while [ $# -gt 0 ]; do
  case "$1" in
    --target) targets+=("$2"); shift 2 ;;
    --out) out=$2; shift 2 ;;
    --html) html=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --settle) settle=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "dashboard-screenshot: unknown argument $1 (see the usage at the top of $0)" >&2; exit 2 ;;
  esac
done
if [ ${#targets[@]} -eq 0 ] || [ -z "$out" ]; then
  echo "usage: $0 --target HOST:PORT[=NODE]... --out FILE.png [-- LOAD COMMAND...]" >&2
  exit 2
fi

# Debian's prometheus, unpacked rather than installed: its package would
# start a service on :9090.
prometheus=$(command -v prometheus || true)
if [ -z "$prometheus" ]; then
  prometheus=target/tools/prometheus/usr/bin/prometheus
  if [ ! -x "$prometheus" ]; then
    echo "== unpacking Debian's prometheus into target/tools/prometheus"
    apt-cache show prometheus >/dev/null 2>&1 || apt-get update -qq
    rm -rf target/tools/deb && mkdir -p target/tools/deb
    (cd target/tools/deb && apt-get download -qq -o APT::Sandbox::User=root prometheus)
    dpkg-deb -x target/tools/deb/prometheus_*.deb target/tools/prometheus
  fi
fi
if ! command -v chromium >/dev/null; then
  echo "== installing chromium"
  apt-cache show chromium >/dev/null 2>&1 || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
fi

tmp=$(mktemp -d)
prometheus_pid=""
cleanup() {
  if [ -n "$prometheus_pid" ]; then
    kill "$prometheus_pid" 2>/dev/null || true
    wait "$prometheus_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
# A signal ends the script through the EXIT trap, with the shell's status
# for it.
trap 'exit 130' INT
trap 'exit 143' TERM

{
  echo "global: {scrape_interval: 2s, scrape_timeout: 2s, evaluation_interval: 2s}"
  echo "scrape_configs:"
  echo "  - job_name: hostpath-csi"
  echo "    static_configs:"
  for target in "${targets[@]}"; do
    address=${target%%=*} node=${target#*=}
    echo "      - {targets: ['$address'], labels: {node: '$node'}}"
  done
} >"$tmp/prometheus.yml"

url=http://127.0.0.1:$port
"$prometheus" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
  --web.listen-address="127.0.0.1:$port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prometheus_pid=$!
# Ready, and every target scraped once and up.
up() { curl -sf "$url/api/v1/query" --data-urlencode 'query=sum(up)' | python3 -c \
  'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)'; }
for _ in $(seq 60); do
  [ "$(up 2>/dev/null || echo 0)" = "${#targets[@]}" ] && break
  kill -0 "$prometheus_pid" 2>/dev/null || { cat "$tmp/prometheus.log" >&2; exit 1; }
  sleep 0.5
done
if [ "$(up 2>/dev/null || echo 0)" != "${#targets[@]}" ]; then
  echo "dashboard-screenshot: not every target answers a scrape:" >&2
  curl -s "$url/api/v1/targets" | python3 -c 'import json,sys
for t in json.load(sys.stdin)["data"]["activeTargets"]: print(" ", t["scrapeUrl"], t["health"], t["lastError"])' >&2
  exit 1
fi

start=$(date +%s)
if [ $# -gt 0 ]; then
  echo "== scraping ${targets[*]} every 2 s while the load runs: $*"
  "$@"
else
  echo "== scraping ${targets[*]} every 2 s for $seconds s"
  sleep "$seconds"
fi
sleep "$settle"
end=$(date +%s)

page=${html:-$tmp/dashboard.html}
summary=$(python3 scripts/dashboard-preview.py --prometheus "$url" --end "$end" \
  --minutes "$(python3 -c "print(($end - $start + 4) / 60)")" --scrape-interval 2s --out "$page")
echo "preview: $summary"
height=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["height"])' "$summary")

kill "$prometheus_pid" 2>/dev/null || true
wait "$prometheus_pid" 2>/dev/null || true
prometheus_pid=""

mkdir -p "$(dirname "$out")"
timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --force-device-scale-factor=1 --user-data-dir="$tmp/chromium" \
  --window-size="1600,$height" --screenshot="$(realpath -m "$out")" "file://$(realpath "$page")" \
  >"$tmp/chromium.log" 2>&1 || { cat "$tmp/chromium.log" >&2; exit 1; }
[ -s "$out" ] || { echo "dashboard-screenshot: chromium wrote no $out" >&2; cat "$tmp/chromium.log" >&2; exit 1; }
echo "dashboard-screenshot: $out (1600x$height)"
