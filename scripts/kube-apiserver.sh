#!/usr/bin/env bash
# Run a throwaway, real Kubernetes API server on loopback for the integration tier: the Go
# program in tools/kube-apiserver, i.e. k8s.io/kubernetes' own test API server
# (cmd/kube-apiserver/app/testing) on an embedded etcd 3.6. Only the API server runs: no
# controller manager (no Job controller), no scheduler, no kubelet. See tools/kube-apiserver/README.md.
#
#   scripts/kube-apiserver.sh install   go build the server (and the binaries of scripts/kube-cluster.sh)
#                                       into $NEXUS_KUBE_DIR/bin (skipped if
#                                       the binary is newer than the sources); prints its path
#   scripts/kube-apiserver.sh start     start it in the background, wait for its ready line,
#                                       print the kubeconfig path on stdout
#   scripts/kube-apiserver.sh stop      stop it (TERM, then KILL after 40 s; idempotent)
#   scripts/kube-apiserver.sh status    print whether it runs (exit 0 = running, 3 = not)
#
# Requires: go (the version in tools/kube-apiserver/go.mod or newer; network access to the Go
# module proxy for the first install). See usage() for the environment variables.
set -euo pipefail

log() { printf 'kube-apiserver: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC_DIR="$ROOT/tools/kube-apiserver"

KUBE_DIR="${NEXUS_KUBE_DIR:-$PWD/.kube-test}"
PORT="${NEXUS_KUBE_PORT:-0}"
START_TIMEOUT="${NEXUS_KUBE_START_TIMEOUT:-120}"
EXTRA_FLAGS="${NEXUS_KUBE_APISERVER_FLAGS:-}"
NODE_IP="${NEXUS_KUBE_NODE_IP:-}"
GO="${NEXUS_KUBE_GO:-go}"
# Go caches: private to $NEXUS_KUBE_DIR by default (so everything the tool needs lives and dies
# there); point them at `go env GOMODCACHE` / `go env GOCACHE` to share the user's caches.
GOMODCACHE_DIR="${NEXUS_KUBE_GOMODCACHE:-$KUBE_DIR/gomod}"
GOCACHE_DIR="${NEXUS_KUBE_GOCACHE:-$KUBE_DIR/gocache}"

BIN_DIR="$KUBE_DIR/bin"
BIN="$BIN_DIR/kube-apiserver"
RUN_DIR="$KUBE_DIR/run"                       # wiped on every start
DIR_MARKER="$RUN_DIR/.nexus-kube-apiserver"   # guards the rm -rf on start
DATA_DIR="$RUN_DIR/data"                      # etcd data + serving certificate
TMP_DIR="$RUN_DIR/tmp"                        # the test server's own temp dir goes here
PID_FILE="$RUN_DIR/kube-apiserver.pid"
STDOUT_FILE="$RUN_DIR/stdout.log"             # the ready line
STDERR_FILE="$RUN_DIR/stderr.log"             # klog + etcd logs
KUBECONFIG_FILE="$RUN_DIR/kubeconfig"
READY_PREFIX="kube-apiserver ready: "

usage() {
  cat <<EOF
usage: $(basename "$0") {install|start|stop|status}

  install  go build tools/kube-apiserver into \$NEXUS_KUBE_DIR/bin (skipped if the binary is newer
           than main.go, go.mod and go.sum); prints the binary path on stdout
  start    (install if needed,) start the server on 127.0.0.1 and wait for its ready line;
           prints the kubeconfig path on stdout (superuser bearer token, namespace default)
  stop     stop the server started by 'start' (idempotent)
  status   report whether the server runs (exit 0 if running, 3 if not)

environment (defaults in brackets):
  NEXUS_KUBE_DIR              binary, caches and run dir [\$PWD/.kube-test]
  NEXUS_KUBE_PORT             https://127.0.0.1:<port>, 0 = a free port [0]
  NEXUS_KUBE_START_TIMEOUT    seconds to wait for the ready line [120]
  NEXUS_KUBE_APISERVER_FLAGS  extra kube-apiserver flags, space-separated (e.g.
                              "--authorization-mode=RBAC") [none]
  NEXUS_KUBE_NODE_IP          cluster mode (scripts/kube-cluster.sh sets it): also serve on this
                              address of the host, the "kubernetes" Service's endpoint [none]
  NEXUS_KUBE_GOMODCACHE       Go module cache for the build [\$NEXUS_KUBE_DIR/gomod]
  NEXUS_KUBE_GOCACHE          Go build cache [\$NEXUS_KUBE_DIR/gocache]
  NEXUS_KUBE_PRUNE_BUILD_CACHE  1 = empty the Go build cache after a build (saves ~2.3 GB of
                              disk; the next build is cold) [0; .ci/run sets 1]
  NEXUS_KUBE_GO               go command [go]

files (under \$NEXUS_KUBE_DIR/run, wiped on start): kubeconfig, stdout.log (ready line),
stderr.log (apiserver and etcd logs), data/ (etcd), kube-apiserver.pid
EOF
}

# A .gitignore in the dir keeps the (large) caches out of `git status` when it is in the repo.
init_kube_dir() {
  mkdir -p "$KUBE_DIR"
  [[ -f "$KUBE_DIR/.gitignore" ]] || printf '# created by scripts/kube-apiserver.sh\n*\n' >"$KUBE_DIR/.gitignore"
}

go_env() {
  # -modcacherw: module files stay writable, so `rm -rf $NEXUS_KUBE_DIR` just works.
  env GOMODCACHE="$GOMODCACHE_DIR" GOCACHE="$GOCACHE_DIR" GOFLAGS="-modcacherw" "$GO" "$@"
}

elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# --------------------------------------------------------------------------- #
# install                                                                      #
# --------------------------------------------------------------------------- #
# The binaries of one build: the test API server (the module's root package) and the cluster's
# (scripts/kube-cluster.sh), all from the same k8s.io/kubernetes module and build cache.
CLUSTER_CMDS=(kubelet kube-controller-manager kube-scheduler kube-proxy cri-clean)

up_to_date() {
  local f b
  for b in "$BIN" "${CLUSTER_CMDS[@]/#/$BIN_DIR/}" "$BIN_DIR/pause"; do
    [[ -x "$b" ]] || return 1
    while IFS= read -r f; do
      [[ "$b" -nt "$f" ]] || return 1
    done < <(find "$SRC_DIR" -name '*.go' -o -name go.mod -o -name go.sum)
  done
}

cmd_install() {
  if up_to_date; then
    log "up to date: $BIN"
    echo "$BIN"
    return 0
  fi
  command -v "$GO" >/dev/null || die "'$GO' not found on PATH (Go is needed to build the server)"
  init_kube_dir
  mkdir -p "$BIN_DIR"
  local t0 kube_version
  log "go mod download (module cache $GOMODCACHE_DIR; first run only, ~600 MB)…"
  t0=$EPOCHREALTIME
  (cd "$SRC_DIR" && go_env mod download) || die "go mod download failed"
  log "  downloaded in $(elapsed_since "$t0")s"
  kube_version="$(cd "$SRC_DIR" && go_env list -m -f '{{.Version}}' k8s.io/kubernetes)" \
    || die "cannot read the k8s.io/kubernetes version from go.mod"
  [[ "$kube_version" =~ ^v1\.([0-9]+)\.[0-9]+$ ]] || die "unexpected k8s.io/kubernetes version '$kube_version'"
  log "go build (Kubernetes $kube_version; a cold build takes minutes on 2 cores)…"
  t0=$EPOCHREALTIME
  # The version stamp a release build gets from hack/lib/version.sh, so GET /version reports
  # $kube_version instead of v0.0.0-master. No -trimpath: the test server locates its package
  # directory through the source path compiled into the binary.
  # -s -w and no DWARF from the compiler: nothing reads debug information of these binaries
  # (stack traces come from the runtime's own tables), and emitting it is a large share of the
  # compile and link time of a cold build.
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=${BASH_REMATCH[1]}"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  local out="$BIN_DIR/.build"
  rm -rf "$out" && mkdir -p "$out"
  (cd "$SRC_DIR" && go_env build -gcflags=all=-dwarf=false -ldflags "$ldflags" -o "$out/" . "${CLUSTER_CMDS[@]/#/./cmd/}") \
    || die "go build failed"
  # The pod sandbox's process: static (it runs FROM scratch).
  (cd "$SRC_DIR" && CGO_ENABLED=0 go_env build -o "$out/pause" ./cmd/pause) || die "go build of pause failed"
  mv -f "$out"/* "$BIN_DIR/"
  rmdir "$out"
  log "  built in $(elapsed_since "$t0")s: kube-apiserver ${CLUSTER_CMDS[*]} pause in $BIN_DIR ($(du -sm "$BIN_DIR" | cut -f1) MiB)"
  if [[ "${NEXUS_KUBE_PRUNE_BUILD_CACHE:-0}" == 1 ]]; then
    # The build cache (~2.3 GB) is only needed to rebuild; the module cache stays, because the
    # test server reads files of its packages at run time.
    log "  pruning the Go build cache $GOCACHE_DIR ($(du -sm "$GOCACHE_DIR" 2>/dev/null | cut -f1) MiB; NEXUS_KUBE_PRUNE_BUILD_CACHE=1)"
    go_env clean -cache || die "go clean -cache failed"
  fi
  echo "$BIN"
}

# --------------------------------------------------------------------------- #
# helpers                                                                      #
# --------------------------------------------------------------------------- #

# Prints the PID from the pid file if that process is alive and really is our server (guards
# against PID reuse); returns 1 otherwise.
running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--data-dir=$DATA_DIR" || return 1
  echo "$pid"
}

ready_line() { grep -m1 -F "$READY_PREFIX" "$STDOUT_FILE" 2>/dev/null; }

rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true; }

dump_logs() {
  local f
  for f in "$STDOUT_FILE" "$STDERR_FILE"; do
    [[ -s "$f" ]] || continue
    printf '\n----- tail -n 60 %s -----\n' "$f" >&2
    tail -n 60 "$f" >&2
  done
}

# --------------------------------------------------------------------------- #
# start                                                                        #
# --------------------------------------------------------------------------- #
cmd_start() {
  local pid line
  if pid="$(running_pid)"; then
    line="$(ready_line)" || line="(not ready yet)"
    log "already running (pid $pid): ${line#"$READY_PREFIX"}"
    echo "$KUBECONFIG_FILE"
    return 0
  fi
  if ! [[ "$PORT" =~ ^(0|[1-9][0-9]{0,4})$ ]] || ((PORT > 65535)); then
    die "NEXUS_KUBE_PORT='$PORT' is not a port number (0 = free port)"
  fi
  [[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "NEXUS_KUBE_START_TIMEOUT='$START_TIMEOUT' is not a number"
  cmd_install >/dev/null

  # Fresh run dir. Only wipe a dir we created ourselves.
  if [[ -e "$RUN_DIR" ]]; then
    if [[ -f "$DIR_MARKER" ]] || [[ -z "$(ls -A "$RUN_DIR")" ]]; then
      rm -rf "${RUN_DIR:?}"
    else
      die "$RUN_DIR exists but was not created by this script; refusing to wipe it"
    fi
  fi
  mkdir -p "$DATA_DIR" "$TMP_DIR"
  touch "$DIR_MARKER"

  local -a extra=() node=()
  [[ -n "$EXTRA_FLAGS" ]] && read -r -a extra <<<"$EXTRA_FLAGS"
  [[ -n "$NODE_IP" ]] && node=(--node-ip="$NODE_IP")

  log "starting (run dir $RUN_DIR, port ${PORT/#0/free})…"
  local t0=$EPOCHREALTIME
  # setsid + nohup: detach from our session so the server outlives this shell; both exec the
  # next program, so $! is the server's PID. TMPDIR: the test server's temp dir (certificates it
  # generates) goes into the run dir.
  TMPDIR="$TMP_DIR" nohup setsid "$BIN" --kubeconfig="$KUBECONFIG_FILE" --port="$PORT" \
    --data-dir="$DATA_DIR" "${node[@]}" -- "${extra[@]}" >"$STDOUT_FILE" 2>"$STDERR_FILE" </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local deadline=$((SECONDS + START_TIMEOUT))
  until line="$(ready_line)"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=0
      wait "$pid" 2>/dev/null || rc=$?
      log "error: the server (pid $pid) exited during startup (exit status $rc)"
      dump_logs
      rm -f "$PID_FILE"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "error: no ready line after ${START_TIMEOUT}s; stopping pid $pid"
      dump_logs
      cmd_stop
      exit 1
    fi
    sleep 0.2
  done
  [[ -s "$KUBECONFIG_FILE" ]] || die "ready, but $KUBECONFIG_FILE is missing"
  log "ready in $(elapsed_since "$t0")s (pid $pid, RSS $(rss_mib "$pid") MiB, logs $RUN_DIR/stderr.log)"
  log "  ${line#"$READY_PREFIX"}"
  echo "$KUBECONFIG_FILE"
}

# --------------------------------------------------------------------------- #
# stop / status                                                                #
# --------------------------------------------------------------------------- #
cmd_stop() {
  local pid i
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$PID_FILE"
    return 0
  fi
  log "stopping pid $pid…"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 80; i++)); do                 # 80 x 0.5 s = 40 s (the server gives up at 30 s)
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 40s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE" "$KUBECONFIG_FILE"
  log "stopped"
}

cmd_status() {
  local pid line
  if pid="$(running_pid)"; then
    line="$(ready_line)" || line="starting, not ready yet"
    echo "kube-apiserver: running (pid $pid, ${line#"$READY_PREFIX"}, RSS $(rss_mib "$pid") MiB)"
    return 0
  fi
  echo "kube-apiserver: not running"
  return 3
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
