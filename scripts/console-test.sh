#!/usr/bin/env bash
# Browser tests of the web console (issue #22 items 4-5): Debian's chromium driven by Playwright
# (playwright-core, pinned) from a node:test file, against real `nexus standalone` processes this
# script starts on free loopback ports, each with the embedded store, a fresh data directory and
# the repository's examples/templates:
#   open   no authentication: the main flows (filters, run page with explanation, timeline and
#          logs, live progress, cancel, child runs, algorithms)
#   auth   API keys (one granted every algorithm, one only knapsack): 401 opens the token dialog,
#          a key sees only the runs it may read
#   scale  $NEXUS_CONSOLE_RUNS dry-run runs (default 100000) seeded by the test over HTTP: the
#          runs page's first page, "Load more" and a filtered query (timings printed and written
#          to $NEXUS_CONSOLE_ARTIFACTS/timings.json; correctness asserted, never timings)
#
#   scripts/console-test.sh [node --test args...]
#
# Builds nothing: NEXUS_BIN (default target/debug/nexus) needs nexus-demo next to it
#   cargo build -p nexus-cli -p nexus-examples
# Installs what is missing: chromium (apt-get) and playwright-core (npm, into $NEXUS_CONSOLE_WORK,
# default ${TMPDIR:-/tmp}/nexus-console-test). Nothing is skipped: a missing browser, package or
# binary fails the run. Screenshots of each page, the standalones' logs and timings.json go to
# $NEXUS_CONSOLE_ARTIFACTS (default target/console-artifacts).
#
# Environment: NEXUS_BIN, NEXUS_CONSOLE_WORK, NEXUS_CONSOLE_ARTIFACTS, NEXUS_CONSOLE_RUNS,
# NEXUS_CONSOLE_CHROMIUM (default /usr/bin/chromium).
set -euo pipefail

log() { printf 'console-test: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="${NEXUS_CONSOLE_WORK:-${TMPDIR:-/tmp}/nexus-console-test}"
artifacts="${NEXUS_CONSOLE_ARTIFACTS:-$repo/target/console-artifacts}"
nexus="${NEXUS_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/nexus}"
chromium="${NEXUS_CONSOLE_CHROMIUM:-/usr/bin/chromium}"
runs="${NEXUS_CONSOLE_RUNS:-100000}"

PLAYWRIGHT_CORE_VERSION=1.65.2

# shellcheck source=lib/apt.sh
source "$repo/scripts/lib/apt.sh"
apt_ensure console-test "$chromium:chromium" node:nodejs npm:npm
[[ -x "$chromium" ]] || die "no chromium at $chromium after installing it"
# (the Debian wrapper script prints a harmless shell warning on some machines: dropped)
"$chromium" --version 2>/dev/null >&2 || die "$chromium does not start"
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' ||
  die "node $(node --version) is older than 20 (playwright-core $PLAYWRIGHT_CORE_VERSION needs 20)"
[[ -x "$nexus" ]] || die "no nexus binary at $nexus: cargo build -p nexus-cli -p nexus-examples (or set NEXUS_BIN)"
[[ -x "$(dirname "$nexus")/nexus-demo" ]] ||
  die "no nexus-demo next to $nexus: cargo build -p nexus-examples"
[[ "$runs" =~ ^[1-9][0-9]*$ && "$runs" -ge 1000 ]] || die "NEXUS_CONSOLE_RUNS must be a number >= 1000"

mkdir -p "$work" "$artifacts"
installed=$(node -p "try { require('$work/node_modules/playwright-core/package.json').version } catch { '' }")
if [[ "$installed" != "$PLAYWRIGHT_CORE_VERSION" ]]; then
  log "npm install playwright-core@$PLAYWRIGHT_CORE_VERSION into $work"
  npm install --prefix "$work" --no-audit --no-fund --silent \
    "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2
fi
[[ -f "$work/node_modules/playwright-core/package.json" ]] || die "playwright-core is missing after npm install"

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

free_port() {
  node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# start NAME [CONFIG]: a standalone on a free port; sets $url once it is ready (not in a
# subshell: $pids must keep its process id for the cleanup).
url=
start() {
  local name=$1 config=${2:-} port data i
  data="$work/data-$name"
  rm -rf "$data"
  mkdir -p "$data"
  for i in 1 2 3; do
    port=$(free_port)
    "$nexus" standalone --listen "127.0.0.1:$port" --data "$data" --templates "$repo/examples/templates" \
      ${config:+--config "$config"} >"$artifacts/standalone-$name.log" 2>&1 &
    pids+=($!)
    local pid=$! deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
      if ! kill -0 "$pid" 2>/dev/null; then break; fi
      if [[ $(curl -fsS "http://127.0.0.1:$port/health/readyz" 2>/dev/null) == ready ]]; then
        url="http://127.0.0.1:$port"
        return 0
      fi
      sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    log "standalone $name did not become ready on port $port (attempt $i); see $artifacts/standalone-$name.log"
    tail -5 "$artifacts/standalone-$name.log" >&2 || true
  done
  die "standalone $name did not start"
}

# API keys of the auth standalone: one for every algorithm, one for knapsack only.
key_all=$("$nexus" api-key new --name console-all --group everything 2>/dev/null)
key_knapsack=$("$nexus" api-key new --name console-knapsack --group team-knapsack 2>/dev/null)
hash() { printf %s "$1" | "$nexus" api-key hash; }
cat >"$work/auth.yaml" <<EOF
auth:
  mode: required
  api_keys:
    keys:
      - {name: console-all, sha256: $(hash "$key_all"), groups: [everything]}
      - {name: console-knapsack, sha256: $(hash "$key_knapsack"), groups: [team-knapsack]}
  rules:
    - {groups: [everything], actions: [submit, read, cancel], algorithms: ["*"]}
    - {groups: [team-knapsack], actions: [submit, read, cancel], algorithms: [knapsack]}
EOF

log "starting standalones ($nexus)"
start open
open_url=$url
start auth "$work/auth.yaml"
auth_url=$url
start scale
scale_url=$url
log "open $open_url, auth $auth_url, scale $scale_url"

export NEXUS_CONSOLE_URL="$open_url" NEXUS_CONSOLE_AUTH_URL="$auth_url" NEXUS_CONSOLE_SCALE_URL="$scale_url"
export NEXUS_CONSOLE_KEY_ALL="$key_all" NEXUS_CONSOLE_KEY_KNAPSACK="$key_knapsack"
export NEXUS_CONSOLE_RUNS="$runs" NEXUS_CONSOLE_ARTIFACTS="$artifacts"
export NEXUS_CONSOLE_CHROMIUM="$chromium" NEXUS_CONSOLE_PLAYWRIGHT="$work/node_modules/playwright-core"
export NEXUS_CONSOLE_PAYLOADS="$repo/examples/payloads"
log "node --test scheduler/console/tests/console.test.mjs (artifacts in $artifacts)"
node --test --test-concurrency=1 --test-reporter=spec "$@" "$repo/scheduler/console/tests/console.test.mjs"
log "ok"
