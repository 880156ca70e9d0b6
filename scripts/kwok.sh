#!/usr/bin/env bash
# Simulated nodes for scale tests: the kwok controller (sigs.k8s.io/kwok) against a running API
# server, managing N fake nodes that run no containers. A pod bound to one of them goes Running,
# and a Job's pod then Succeeded (kwok's stages in tools/kwok/kwok.yaml), so with the Job
# controller and kube-scheduler running (scripts/kube-cluster.sh) Jobs complete without a kubelet.
# kwok opens no network interface and no port: it only writes node, lease and pod status.
#
#   scripts/kwok.sh install                              go install kwok into $NEXUS_KWOK_DIR/bin
#   scripts/kwok.sh start --kubeconfig PATH [--nodes N]  start kwok, create N nodes, wait Ready
#   scripts/kwok.sh stop                                 delete the nodes, stop kwok (idempotent)
#   scripts/kwok.sh status                               exit 0 = running, 3 = not
#
# The nodes are named kwok-node-<i>, labelled type=kwok and tainted
# kwok.x-k8s.io/node=fake:NoSchedule: only pods that tolerate the taint (and select the label)
# land on them, and kwok manages no other node.
set -euo pipefail

log() { printf 'kwok: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$ROOT/tools/kwok/kwok.yaml"
KWOK_VERSION="v0.8.0"

KUBE_DIR="${NEXUS_KUBE_DIR:-$PWD/.kube-test}"
KWOK_DIR="${NEXUS_KWOK_DIR:-$KUBE_DIR/kwok}"
GO="${NEXUS_KUBE_GO:-go}"
GOMODCACHE_DIR="${NEXUS_KUBE_GOMODCACHE:-$KUBE_DIR/gomod}"
GOCACHE_DIR="${NEXUS_KUBE_GOCACHE:-$KUBE_DIR/gocache}"
READY_TIMEOUT="${NEXUS_KWOK_READY_TIMEOUT:-120}"

BIN="$KWOK_DIR/bin/kwok"
RUN_DIR="$KWOK_DIR/run"
DIR_MARKER="$RUN_DIR/.nexus-kwok"
PID_FILE="$RUN_DIR/kwok.pid"
LOG_FILE="$RUN_DIR/kwok.log"
KUBECONFIG_LINK="$RUN_DIR/kubeconfig.path"
NODES_FILE="$RUN_DIR/nodes"
CA_FILE="$RUN_DIR/ca.crt"
NODE_LABEL="type=kwok"

usage() {
  cat <<EOF
usage: $(basename "$0") {install | start --kubeconfig PATH [--nodes N] | stop | status}

  install  go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION into \$NEXUS_KWOK_DIR/bin (skipped
           when that version is there); prints the binary path
  start    (install if needed,) start kwok against the API server of PATH (a kubeconfig with a
           bearer token, as scripts/kube-apiserver.sh writes), create N nodes (default 10,
           at most 5000) and wait until they are Ready
  stop     delete the nodes (if the API server still answers) and stop kwok (idempotent)
  status   report whether kwok runs (exit 0 if running, 3 if not)

environment (defaults in brackets):
  NEXUS_KWOK_DIR            binary and run dir [\$NEXUS_KUBE_DIR/kwok]
  NEXUS_KUBE_DIR            [\$PWD/.kube-test]
  NEXUS_KUBE_GOMODCACHE     Go module cache [\$NEXUS_KUBE_DIR/gomod]
  NEXUS_KUBE_GOCACHE        Go build cache [\$NEXUS_KUBE_DIR/gocache]
  NEXUS_KWOK_READY_TIMEOUT  seconds to wait for the nodes to be Ready [120]
EOF
}

go_env() {
  env GOMODCACHE="$GOMODCACHE_DIR" GOCACHE="$GOCACHE_DIR" GOFLAGS="-modcacherw" "$GO" "$@"
}

elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

cmd_install() {
  if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -qF "${KWOK_VERSION#v}"; then
    log "up to date: $BIN ($KWOK_VERSION)"
    echo "$BIN"
    return 0
  fi
  command -v "$GO" >/dev/null || die "'$GO' not found on PATH (Go is needed to build kwok)"
  mkdir -p "$KWOK_DIR/bin"
  [[ -f "$KWOK_DIR/.gitignore" ]] || printf '# created by scripts/kwok.sh\n*\n' >"$KWOK_DIR/.gitignore"
  log "go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION (module cache $GOMODCACHE_DIR)…"
  local t0=$EPOCHREALTIME
  (cd "$KWOK_DIR" && GOBIN="$KWOK_DIR/bin" go_env install -gcflags=all=-dwarf=false -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION") \
    || die "go install failed"
  log "  built in $(elapsed_since "$t0")s: $BIN"
  echo "$BIN"
}

running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--config=$CONFIG" || return 1
  echo "$pid"
}

# The API server of a kubeconfig written by scripts/kube-apiserver.sh: server URL, CA, token.
kube_field() { sed -n "s/^ *$1: *//p" "$2" | head -1 | tr -d '"'; }

load_api() {
  local kc="$1"
  [[ -f "$kc" ]] || die "kubeconfig $kc does not exist"
  API_SERVER="$(kube_field server "$kc")"
  API_TOKEN="$(kube_field token "$kc")"
  local ca
  ca="$(kube_field certificate-authority-data "$kc")"
  [[ -n "$API_SERVER" && -n "$API_TOKEN" ]] \
    || die "kubeconfig $kc has no server or bearer token (kwok.sh expects one written by scripts/kube-apiserver.sh)"
  if [[ -n "$ca" ]]; then
    mkdir -p "$RUN_DIR"
    printf '%s' "$ca" | base64 -d >"$CA_FILE" || die "bad certificate-authority-data in $kc"
    API_CURL=(curl -sS --max-time 20 --cacert "$CA_FILE" -H "Authorization: Bearer $API_TOKEN")
  else
    API_CURL=(curl -sS --max-time 20 -H "Authorization: Bearer $API_TOKEN")
  fi
}

api() { "${API_CURL[@]}" "$@"; }

node_json() {
  cat <<EOF
{"apiVersion":"v1","kind":"Node","metadata":{"name":"$1","labels":{"type":"kwok","kubernetes.io/hostname":"$1","kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","node-role.kubernetes.io/agent":""},"annotations":{"node.alpha.kubernetes.io/ttl":"0","kwok.x-k8s.io/node":"fake"}},"spec":{"taints":[{"key":"kwok.x-k8s.io/node","value":"fake","effect":"NoSchedule"}]},"status":{"allocatable":{"cpu":"32","memory":"256Gi","pods":"110"},"capacity":{"cpu":"32","memory":"256Gi","pods":"110"}}}
EOF
}

ready_nodes() {
  api "$API_SERVER/api/v1/nodes?labelSelector=$NODE_LABEL" \
    | jq '[.items[] | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length' 2>/dev/null \
    || echo 0
}

cmd_start() {
  local kubeconfig="" nodes=10
  while (($#)); do
    case "$1" in
      --kubeconfig) kubeconfig="${2:-}"; shift 2 ;;
      --kubeconfig=*) kubeconfig="${1#*=}"; shift ;;
      --nodes) nodes="${2:-}"; shift 2 ;;
      --nodes=*) nodes="${1#*=}"; shift ;;
      *) die "start: unknown argument '$1' (see --help)" ;;
    esac
  done
  [[ -n "$kubeconfig" ]] || die "start needs --kubeconfig PATH (scripts/kube-apiserver.sh start prints it)"
  [[ "$nodes" =~ ^[1-9][0-9]*$ ]] && ((nodes <= 5000)) || die "--nodes '$nodes' must be a number from 1 to 5000"
  [[ "$READY_TIMEOUT" =~ ^[0-9]+$ ]] || die "NEXUS_KWOK_READY_TIMEOUT='$READY_TIMEOUT' is not a number"
  command -v jq >/dev/null || die "jq is needed (node readiness is read from the API server's JSON)"
  kubeconfig="$(realpath "$kubeconfig")"
  local pid
  if pid="$(running_pid)"; then
    die "already running (pid $pid, against $(cat "$KUBECONFIG_LINK" 2>/dev/null)); run 'stop' first"
  fi
  cmd_install >/dev/null
  if [[ -e "$RUN_DIR" ]]; then
    if [[ -f "$DIR_MARKER" ]] || [[ -z "$(ls -A "$RUN_DIR")" ]]; then
      rm -rf "${RUN_DIR:?}"
    else
      die "$RUN_DIR exists but was not created by this script; refusing to wipe it"
    fi
  fi
  mkdir -p "$RUN_DIR"
  touch "$DIR_MARKER"
  load_api "$kubeconfig"
  api "$API_SERVER/readyz" >/dev/null || die "the API server of $kubeconfig ($API_SERVER) does not answer"
  echo "$kubeconfig" >"$KUBECONFIG_LINK"

  log "starting kwok $KWOK_VERSION against $API_SERVER (log $LOG_FILE)…"
  local t0=$EPOCHREALTIME
  # HOME: kwok would otherwise also read ~/.kwok/kwok.yaml.
  HOME="$RUN_DIR" nohup setsid "$BIN" --config="$CONFIG" --kubeconfig="$kubeconfig" \
    >"$LOG_FILE" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  sleep 0.5
  kill -0 "$pid" 2>/dev/null || { tail -n 40 "$LOG_FILE" >&2; die "kwok exited at once"; }

  log "creating $nodes nodes…"
  local i code
  for ((i = 0; i < nodes; i++)); do
    code="$(node_json "kwok-node-$i" | api -o /dev/null -w '%{http_code}' -X POST \
      -H 'Content-Type: application/json' --data-binary @- "$API_SERVER/api/v1/nodes")"
    [[ "$code" == 201 || "$code" == 409 ]] || { cmd_stop; die "creating node kwok-node-$i: HTTP $code"; }
  done
  echo "$nodes" >"$NODES_FILE"
  local deadline=$((SECONDS + READY_TIMEOUT)) ready=0
  while ready="$(ready_nodes)"; ((ready < nodes)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$LOG_FILE" >&2
      die "kwok (pid $pid) exited before the nodes were Ready"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 40 "$LOG_FILE" >&2
      cmd_stop
      die "only $ready of $nodes nodes Ready after ${READY_TIMEOUT}s"
    fi
    sleep 0.5
  done
  log "ready in $(elapsed_since "$t0")s: $nodes nodes (pid $pid)"
}

cmd_stop() {
  local pid kc i
  if [[ -f "$KUBECONFIG_LINK" ]] && kc="$(<"$KUBECONFIG_LINK")" && [[ -f "$kc" ]]; then
    # Best effort: the API server may be gone already (then so are the nodes).
    if (load_api "$kc" && api -o /dev/null -X DELETE "$API_SERVER/api/v1/nodes?labelSelector=$NODE_LABEL") 2>/dev/null; then
      log "nodes labelled $NODE_LABEL deleted"
    fi
  fi
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$PID_FILE"
    return 0
  fi
  log "stopping pid $pid…"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 10s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    echo "kwok: running (pid $pid, $(cat "$NODES_FILE" 2>/dev/null || echo '?') nodes, against $(cat "$KUBECONFIG_LINK" 2>/dev/null))"
    return 0
  fi
  echo "kwok: not running"
  return 3
}

case "${1:-}" in
  install) cmd_install ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
