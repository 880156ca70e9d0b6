#!/usr/bin/env bash
# A throwaway, real OpenID Connect provider for the integration tier: Dex (dexidp/dex v2.41.1),
# built from the Go module proxy, on loopback, with in-memory storage, two static users
# (alice@example.com and bob@example.com, password "password"), the password grant, and two
# clients: `nexus` (the audience the tests configure) and `other-app` (a token for another
# audience). Its signing keys rotate every 30 s and its ID tokens live NEXUS_DEX_ID_TOKENS, so
# the tests see key rotation and expiry for real. See docs/DECISIONS.md ("Authentication").
#
#   scripts/dex.sh install   go build Dex into $NEXUS_DEX_DIR/bin (skipped when built); prints its path
#   scripts/dex.sh start     start it in the background, wait until discovery answers, print the issuer URL
#   scripts/dex.sh stop      stop it (TERM, then KILL after 10 s; idempotent)
#   scripts/dex.sh status    print whether it runs (exit 0 = running, 3 = not)
#
# Everything lives under $NEXUS_DEX_DIR (binary, generated build module, config, logs, pid).
set -euo pipefail

log() { printf 'dex: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Dex v2.41.1 as a Go pseudo-version: Dex tags v2 releases without a /v2 module path, so the
# proxy knows them only by commit (43956db7fd75 is the v2.41.1 tag).
DEX_VERSION="v0.0.0-20240807174518-43956db7fd75"
DEX_API_VERSION="v2.1.1-0.20240807174518-43956db7fd75"

DEX_DIR="${NEXUS_DEX_DIR:-$PWD/.dex-test}"
PORT="${NEXUS_DEX_PORT:-0}"
ID_TOKENS="${NEXUS_DEX_ID_TOKENS:-8s}"
SIGNING_KEYS="${NEXUS_DEX_SIGNING_KEYS:-10s}"
START_TIMEOUT="${NEXUS_DEX_START_TIMEOUT:-60}"
GO="${NEXUS_DEX_GO:-go}"
GOMODCACHE_DIR="${NEXUS_DEX_GOMODCACHE:-$DEX_DIR/gomod}"
GOCACHE_DIR="${NEXUS_DEX_GOCACHE:-$DEX_DIR/gocache}"

BIN="$DEX_DIR/bin/dex"
SRC_DIR="$DEX_DIR/src"
RUN_DIR="$DEX_DIR/run"
PID_FILE="$RUN_DIR/dex.pid"
LOG_FILE="$RUN_DIR/dex.log"
CONFIG="$RUN_DIR/config.yaml"
ISSUER_FILE="$RUN_DIR/issuer"

usage() {
  cat <<EOF
usage: $(basename "$0") {install|start|stop|status}

environment (defaults in brackets):
  NEXUS_DEX_DIR            binary, build module, caches, run dir [\$PWD/.dex-test]
  NEXUS_DEX_PORT           http://127.0.0.1:<port>/dex, 0 = a free port [0]
  NEXUS_DEX_ID_TOKENS      lifetime of ID tokens [8s]
  NEXUS_DEX_SIGNING_KEYS   signing key lifetime (Dex checks every 30 s) [10s]
  NEXUS_DEX_START_TIMEOUT  seconds to wait for discovery [60]
  NEXUS_DEX_GOMODCACHE     Go module cache [\$NEXUS_DEX_DIR/gomod]
  NEXUS_DEX_GOCACHE        Go build cache [\$NEXUS_DEX_DIR/gocache]
  NEXUS_DEX_GO             go command [go]
EOF
}

install() {
  mkdir -p "$DEX_DIR/bin" "$SRC_DIR"
  [ -f "$DEX_DIR/.gitignore" ] || echo '*' >"$DEX_DIR/.gitignore"
  if [ -x "$BIN" ] && [ "$(cat "$DEX_DIR/bin/version" 2>/dev/null)" = "$DEX_VERSION" ]; then
    echo "$BIN"
    return
  fi
  command -v "$GO" >/dev/null || die "go not found (set NEXUS_DEX_GO)"
  # `go install dex@version` refuses Dex's go.mod (it has a replace directive), so Dex is built
  # as a dependency of a one-line module that requires it at the pinned version.
  cat >"$SRC_DIR/go.mod" <<EOF
module nexus.local/dex-build

go 1.22

require (
	github.com/dexidp/dex $DEX_VERSION
	github.com/dexidp/dex/api/v2 $DEX_API_VERSION
)
EOF
  cat >"$SRC_DIR/tools.go" <<'EOF'
//go:build tools

package tools

import _ "github.com/dexidp/dex/cmd/dex"
EOF
  log "building Dex $DEX_VERSION (first build: a few minutes)"
  (cd "$SRC_DIR" && GOMODCACHE="$GOMODCACHE_DIR" GOCACHE="$GOCACHE_DIR" GOFLAGS=-mod=mod \
    GOTOOLCHAIN=local "$GO" build -gcflags=all=-dwarf=false -ldflags="-s -w" -o "$BIN" github.com/dexidp/dex/cmd/dex) \
    >"$DEX_DIR/build.log" 2>&1 || { tail -20 "$DEX_DIR/build.log" >&2; die "go build failed ($DEX_DIR/build.log)"; }
  echo "$DEX_VERSION" >"$DEX_DIR/bin/version"
  echo "$BIN"
}

running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
  running && die "already running (pid $(cat "$PID_FILE")); stop it first"
  install >/dev/null
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR"
  local port=$PORT
  [ "$port" = 0 ] && port=$(free_port)
  local issuer="http://127.0.0.1:$port/dex"
  # bcrypt of "password" (cost 10), the password of both static users.
  local hash='$2a$10$2b2cU8CPhOTaGrs1HRQuAueS7JTT5ZHsHSzYiFPm1leZck7Mc8T4W'
  cat >"$CONFIG" <<EOF
issuer: $issuer
storage:
  type: memory
web:
  http: 127.0.0.1:$port
logger:
  level: info
expiry:
  signingKeys: "$SIGNING_KEYS"
  idTokens: "$ID_TOKENS"
oauth2:
  passwordConnector: local
  skipApprovalScreen: true
  grantTypes: [password, refresh_token, authorization_code]
enablePasswordDB: true
staticClients:
  - id: nexus
    name: Nexus
    secret: nexus-secret
    redirectURIs: ["http://127.0.0.1/callback"]
  - id: other-app
    name: Another application
    secret: other-secret
    redirectURIs: ["http://127.0.0.1/callback"]
staticPasswords:
  - email: alice@example.com
    hash: "$hash"
    username: alice
    userID: "0a1b2c3d-0000-4000-8000-00000000000a"
  - email: bob@example.com
    hash: "$hash"
    username: bob
    userID: "0a1b2c3d-0000-4000-8000-00000000000b"
EOF
  "$BIN" serve "$CONFIG" >"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  until curl -fsS "$issuer/.well-known/openid-configuration" >/dev/null 2>&1; do
    running || { tail -20 "$LOG_FILE" >&2; die "Dex exited during start-up ($LOG_FILE)"; }
    [ $SECONDS -lt $deadline ] || { stop; die "Dex did not answer within ${START_TIMEOUT}s"; }
    sleep 0.2
  done
  echo "$issuer" >"$ISSUER_FILE"
  log "ready at $issuer (pid $(cat "$PID_FILE"))"
  echo "$issuer"
}

stop() {
  if running; then
    local pid
    pid=$(cat "$PID_FILE")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    log "stopped (pid $pid)"
  fi
  rm -f "$PID_FILE"
}

status() {
  if running; then
    echo "running (pid $(cat "$PID_FILE"), issuer $(cat "$ISSUER_FILE" 2>/dev/null))"
  else
    echo "not running"
    exit 3
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage; exit 2 ;;
esac
