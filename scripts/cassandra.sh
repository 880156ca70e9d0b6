#!/usr/bin/env bash
# Run a throwaway single-node Apache Cassandra 5.0.x for local development and
# integration tests, built only from Maven Central jars (no tarball, no docker).
#
#   scripts/cassandra.sh install   fetch the jars into a cache dir (idempotent)
#   scripts/cassandra.sh start     start a node in the background, wait until CQL is up
#   scripts/cassandra.sh stop      stop it (TERM, then KILL after 20 s; idempotent)
#   scripts/cassandra.sh status    print whether it runs (exit 0 = running, 3 = not)
#
# Requires: java 17 and mvn on PATH (openssl too with NEXUS_CASSANDRA_TLS). See usage() for the
# environment variables.
set -euo pipefail

CASSANDRA_VERSION="${NEXUS_CASSANDRA_VERSION:-5.0.9}"
CACHE_DIR="${NEXUS_CASSANDRA_CACHE:-$HOME/.cache/nexus/cassandra-$CASSANDRA_VERSION}"
DATA_DIR="${NEXUS_CASSANDRA_DIR:-/tmp/nexus-cassandra}"
CQL_PORT="${NEXUS_CASSANDRA_PORT:-9042}"
# The address the node binds and announces (listen and rpc address). Loopback by default; the
# node IP of scripts/kube-cluster.sh (10.254.254.1) makes it reachable from pods.
HOST="${NEXUS_CASSANDRA_HOST:-127.0.0.1}"
# Inter-node ports: kept off the defaults (7000/7001) so we never clash with a
# "real" Cassandra on the same host. A single node still needs to bind them.
STORAGE_PORT="${NEXUS_CASSANDRA_STORAGE_PORT:-7010}"
SSL_STORAGE_PORT="${NEXUS_CASSANDRA_SSL_STORAGE_PORT:-7011}"
JMX_PORT="${NEXUS_CASSANDRA_JMX_PORT:-}"          # empty = JMX off
START_TIMEOUT="${NEXUS_CASSANDRA_START_TIMEOUT:-180}"
KEEP="${NEXUS_CASSANDRA_KEEP:-0}"
AUTH="${NEXUS_CASSANDRA_AUTH:-0}"
TLS="${NEXUS_CASSANDRA_TLS:-0}"                    # 0 | 1 (TLS required) | mtls (+ client certs)
HEAP_MIN="${NEXUS_CASSANDRA_HEAP_MIN:-512m}"
HEAP_MAX="${NEXUS_CASSANDRA_HEAP_MAX:-1g}"

LIB_DIR="$CACHE_DIR/lib"
LIB_MARKER="$LIB_DIR/.complete"                    # written only after a full copy
PID_FILE="$DATA_DIR/cassandra.pid"
DIR_MARKER="$DATA_DIR/.nexus-cassandra"            # guards the rm -rf on start
LOG_FILE="$DATA_DIR/logs/system.log"
STDOUT_FILE="$DATA_DIR/logs/stdout.log"
STDERR_FILE="$DATA_DIR/logs/stderr.log"
TLS_DIR="$DATA_DIR/tls"
# Name in the server certificate: deliberately not 127.0.0.1, so clients must verify against a
# configured name (the run store's tls_server_name) rather than the node's address.
TLS_SERVER_NAME=cassandra.test

usage() {
  cat <<EOF
usage: $(basename "$0") {install|start|stop|status}

  install  download cassandra-all $CASSANDRA_VERSION + deps from Maven Central via mvn
           into \$NEXUS_CASSANDRA_CACHE/lib (skipped if already complete)
  start    (install if needed,) start a single node on \$NEXUS_CASSANDRA_HOST and wait for CQL
  stop     stop the node started by 'start' (idempotent)
  status   report whether the node runs (exit 0 if running, 3 if not)

environment (defaults in brackets):
  NEXUS_CASSANDRA_CACHE          jar cache dir [$HOME/.cache/nexus/cassandra-$CASSANDRA_VERSION]
  NEXUS_CASSANDRA_DIR            data/log/conf dir, wiped on start [/tmp/nexus-cassandra]
  NEXUS_CASSANDRA_KEEP=1         keep existing data on start instead of wiping [0]
  NEXUS_CASSANDRA_HOST           address bound and announced (an address of this host) [127.0.0.1]
  NEXUS_CASSANDRA_PORT           native CQL port [9042]
  NEXUS_CASSANDRA_STORAGE_PORT   inter-node port [7010] (SSL: NEXUS_CASSANDRA_SSL_STORAGE_PORT [7011])
  NEXUS_CASSANDRA_JMX_PORT       enable JMX on 127.0.0.1:<port> (nodetool) [off]
  NEXUS_CASSANDRA_AUTH=1         PasswordAuthenticator, superuser cassandra/cassandra [0]
  NEXUS_CASSANDRA_TLS=1          TLS required on the CQL port; a throwaway CA and a server cert
                                 for DNS:$TLS_SERVER_NAME (not the IP) are generated into
                                 \$NEXUS_CASSANDRA_DIR/tls (ca.pem, client.pem, client.key; mode
                                 holds 1 or mtls) [0]
  NEXUS_CASSANDRA_TLS=mtls       as 1, and clients must present a certificate signed by that CA
  NEXUS_CASSANDRA_START_TIMEOUT  seconds to wait for readiness [180]
  NEXUS_CASSANDRA_HEAP_MIN/MAX   JVM heap [512m/1g]
EOF
}

log() { printf 'cassandra: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --------------------------------------------------------------------------- #
# install                                                                      #
# --------------------------------------------------------------------------- #
cmd_install() {
  if [[ -f "$LIB_MARKER" ]]; then
    log "jars already present in $LIB_DIR"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found on PATH"
  mkdir -p "$CACHE_DIR"
  # Throwaway pom whose only purpose is to resolve cassandra-all's runtime
  # dependency closure. Jars land in ~/.m2 first, then are copied to lib/.
  cat >"$CACHE_DIR/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.nexus</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.6.1</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
  log "fetching jars from Maven Central (first run only, ~95 MB into ~/.m2)…"
  rm -rf "$LIB_DIR"
  (cd "$CACHE_DIR" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$LIB_DIR") \
    || die "mvn dependency:copy-dependencies failed"
  compgen -G "$LIB_DIR/cassandra-all-*.jar" >/dev/null || die "cassandra-all jar missing in $LIB_DIR"
  compgen -G "$LIB_DIR/jamm-*.jar" >/dev/null || die "jamm jar missing in $LIB_DIR"
  touch "$LIB_MARKER"
  log "installed $(find "$LIB_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$LIB_DIR" | cut -f1)) in $LIB_DIR"
}

# --------------------------------------------------------------------------- #
# helpers                                                                      #
# --------------------------------------------------------------------------- #

# Prints the PID from the pid file if that process is alive and really is our
# CassandraDaemon (guards against PID reuse); returns 1 otherwise.
running_pid() {
  local pid
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q CassandraDaemon || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

dump_logs() {
  local f
  for f in "$LOG_FILE" "$STDOUT_FILE" "$STDERR_FILE"; do
    [[ -s "$f" ]] || continue
    printf '\n----- tail -n 60 %s -----\n' "$f" >&2
    tail -n 60 "$f" >&2
  done
}

# Throwaway CA, server certificate (SAN DNS:$TLS_SERVER_NAME only) and client certificate,
# EC P-256, valid 30 days. Kept as is when all files exist (NEXUS_CASSANDRA_KEEP=1), so clients
# holding the old CA keep working.
gen_tls() {
  local f missing=0
  for f in ca.pem server.pem server-keystore.pem client.pem client.key; do
    [[ -s "$TLS_DIR/$f" ]] || missing=1
  done
  if [[ "$missing" == 0 ]]; then
    log "reusing TLS material in $TLS_DIR"
    return 0
  fi
  command -v openssl >/dev/null || die "openssl not found on PATH (needed by NEXUS_CASSANDRA_TLS)"
  rm -rf "${TLS_DIR:?}"
  mkdir -p "$TLS_DIR"
  cat >"$TLS_DIR/ext.cnf" <<EOF
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:$TLS_SERVER_NAME
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  # -newkey writes PKCS#8 ("BEGIN PRIVATE KEY"), the form Cassandra's PEMReader expects.
  local -a key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  local -a sign=(-req -days 30 -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" -extfile "$TLS_DIR/ext.cnf")
  # errexit does not apply inside a subshell tested by ||: the final verify is what fails when
  # any step before it did.
  (
    cd "$TLS_DIR"
    openssl req -x509 "${key[@]}" -keyout ca.key -out ca.pem -days 30 \
      -subj "/CN=nexus throwaway test CA" -config ext.cnf -extensions ca
    openssl req -new "${key[@]}" -keyout server.key -out server.csr -subj "/CN=$TLS_SERVER_NAME" -config /dev/null
    openssl x509 "${sign[@]}" -extensions server -set_serial "0x$(openssl rand -hex 16)" \
      -in server.csr -out server.pem
    openssl req -new "${key[@]}" -keyout client.key -out client.csr -subj "/CN=nexus-test-client" -config /dev/null
    openssl x509 "${sign[@]}" -extensions client -set_serial "0x$(openssl rand -hex 16)" \
      -in client.csr -out client.pem
    # PEMBasedSslContextFactory's keystore: private key followed by the certificate chain.
    cat server.key server.pem >server-keystore.pem
    rm -f server.csr client.csr
    chmod 600 ./*.key server-keystore.pem
    openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
  ) 2>"$TLS_DIR/openssl.log" || {
    cat "$TLS_DIR/openssl.log" >&2
    rm -rf "${TLS_DIR:?}"                          # never reused half-made
    die "generating TLS material failed"
  }
  log "generated a throwaway CA and certificates in $TLS_DIR (server name $TLS_SERVER_NAME)"
}

write_config() {
  local authn authz
  if [[ "$AUTH" == 1 ]]; then
    authn=PasswordAuthenticator authz=CassandraAuthorizer
  else
    authn=AllowAllAuthenticator authz=AllowAllAuthorizer
  fi
  # Minimal yaml; everything not listed uses Cassandra's built-in defaults.
  cat >"$DATA_DIR/conf/cassandra.yaml" <<EOF
# generated by scripts/cassandra.sh -- overwritten on every start
cluster_name: nexus-dev
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$STORAGE_PORT"
listen_address: $HOST
rpc_address: $HOST
storage_port: $STORAGE_PORT
ssl_storage_port: $SSL_STORAGE_PORT
start_native_transport: true
native_transport_port: $CQL_PORT
authenticator: $authn
authorizer: $authz
role_manager: CassandraRoleManager
data_file_directories:
  - $DATA_DIR/data
commitlog_directory: $DATA_DIR/commitlog
saved_caches_directory: $DATA_DIR/saved_caches
hints_directory: $DATA_DIR/hints
cdc_raw_directory: $DATA_DIR/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
# dev node: no snapshot on DROP/TRUNCATE, so disk is freed immediately
auto_snapshot: false
# Paxos v2 (Cassandra 4.1+): 2 round trips instead of 4 for an uncontended lightweight
# transaction and far fewer contention timeouts; what the Nexus docs recommend for production.
paxos_variant: ${NEXUS_CASSANDRA_PAXOS:-v2}
EOF
  if [[ "$TLS" != 0 ]]; then
    local client_auth=false
    [[ "$TLS" == mtls ]] && client_auth=true
    # Tells tests which mode the material in $TLS_DIR is served with.
    echo "$TLS" >"$TLS_DIR/mode"
    # Cassandra 5 reads PEM directly: keystore = key + chain, truststore = CA bundle.
    cat >>"$DATA_DIR/conf/cassandra.yaml" <<EOF
client_encryption_options:
  enabled: true
  optional: false
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: $TLS_DIR/server-keystore.pem
  truststore: $TLS_DIR/ca.pem
  require_client_auth: $client_auth
EOF
  else
    rm -f "$TLS_DIR/mode"
  fi

  cat >"$DATA_DIR/conf/logback.xml" <<EOF
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$LOG_FILE</file>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
  </root>
</configuration>
EOF
}

# --------------------------------------------------------------------------- #
# start                                                                        #
# --------------------------------------------------------------------------- #
cmd_start() {
  local pid
  if pid="$(running_pid)"; then
    log "already running (pid $pid, CQL $HOST:$CQL_PORT)"
    return 0
  fi
  command -v java >/dev/null || die "java not found on PATH"
  case "$TLS" in
    0 | 1 | mtls) ;;
    *) die "NEXUS_CASSANDRA_TLS='$TLS' is not 0, 1 or mtls" ;;
  esac
  [[ -f "$LIB_MARKER" ]] || cmd_install
  if port_open "$CQL_PORT"; then
    die "port $CQL_PORT is already in use by another process"
  fi

  # Fresh data dir unless asked to keep it. Only wipe dirs we created ourselves.
  if [[ "$KEEP" != 1 && -e "$DATA_DIR" ]]; then
    if [[ -f "$DIR_MARKER" ]] || [[ -z "$(ls -A "$DATA_DIR")" ]]; then
      rm -rf "${DATA_DIR:?}"
    else
      die "$DATA_DIR exists but was not created by this script; refusing to wipe it"
    fi
  fi
  local fresh=1
  [[ -d "$DATA_DIR/data/system_auth" ]] && fresh=0
  mkdir -p "$DATA_DIR"/{conf,logs,data,commitlog,saved_caches,hints,cdc_raw,triggers}
  touch "$DIR_MARKER"
  # Start each run with an empty system.log so readiness checks only see this
  # run's lines (with KEEP=1 the previous log is kept as system.log.1).
  [[ -s "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.1"
  : >"$LOG_FILE"
  if [[ "$TLS" != 0 ]]; then gen_tls; fi
  write_config

  local jamm
  jamm="$(compgen -G "$LIB_DIR/jamm-*.jar" | head -n1)"

  local -a jvm=(
    -Xms"$HEAP_MIN" -Xmx"$HEAP_MAX" -Xss256k
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
    -XX:+UseThreadPriorities -XX:+HeapDumpOnOutOfMemoryError -XX:+ExitOnOutOfMemoryError
    -XX:HeapDumpPath="$DATA_DIR/logs"
    -XX:+PerfDisableSharedMem
    -ea -da:net.openhft...
    -Djava.net.preferIPv4Stack=true
    # jamm measures object sizes for memtable accounting; Cassandra requires the agent.
    -javaagent:"$jamm"
    # JPMS flags from Cassandra's conf/jvm17-server.options
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    # Cassandra config / locations
    -Dcassandra.config="file://$DATA_DIR/conf/cassandra.yaml"
    -Dlogback.configurationFile="file://$DATA_DIR/conf/logback.xml"
    -Dcassandra.storagedir="$DATA_DIR"
    -Dcassandra.logdir="$DATA_DIR/logs"
    -Dcassandra.triggers_dir="$DATA_DIR/triggers"
    # without this, CassandraDaemon closes stdout/stderr (and we lose crash output)
    -Dcassandra-foreground=yes
    # fast single-node startup
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=0
    -Dcassandra.superuser_setup_delay_ms=0
    -Dcassandra.consistent.rangemovement=false
  )
  if [[ -n "$JMX_PORT" ]]; then
    # local.port => JMX bound to loopback only, no auth
    jvm+=(-Dcassandra.jmx.local.port="$JMX_PORT")
  fi

  log "starting Cassandra $CASSANDRA_VERSION (data: $DATA_DIR, CQL: $HOST:$CQL_PORT)…"
  local t0=$EPOCHREALTIME
  # setsid + nohup: detach from our session so the node outlives this shell.
  nohup setsid java "${jvm[@]}" -cp "$LIB_DIR/*" \
    org.apache.cassandra.service.CassandraDaemon \
    >"$STDOUT_FILE" 2>"$STDERR_FILE" </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"

  # Readiness: JVM alive, log says CQL is listening and startup finished, and
  # the port accepts TCP.
  # With auth on a fresh node, also wait until the default superuser exists.
  local deadline=$((SECONDS + START_TIMEOUT))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "error: JVM (pid $pid) exited during startup"
      dump_logs
      rm -f "$PID_FILE"
      exit 1
    fi
    if grep -q 'Starting listening for CQL clients' "$LOG_FILE" 2>/dev/null \
       && grep -q 'Startup complete' "$LOG_FILE" \
       && port_open "$CQL_PORT" \
       && { [[ "$AUTH" != 1 || "$fresh" != 1 ]] || grep -q 'Created default superuser' "$LOG_FILE"; }; then
      break
    fi
    if ((SECONDS >= deadline)); then
      log "error: not ready after ${START_TIMEOUT}s; stopping pid $pid"
      dump_logs
      cmd_stop
      exit 1
    fi
    sleep 0.5
  done
  local elapsed
  elapsed="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
  log "ready in ${elapsed}s (pid $pid, CQL $HOST:$CQL_PORT, log $LOG_FILE)"
  if [[ "$TLS" != 0 ]]; then
    log "TLS ($TLS) on the CQL port; server name $TLS_SERVER_NAME"
    log "  CA:          $TLS_DIR/ca.pem"
    log "  client cert: $TLS_DIR/client.pem"
    log "  client key:  $TLS_DIR/client.key"
  fi
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
  for ((i = 0; i < 40; i++)); do                 # 40 x 0.5 s = 20 s grace
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 20s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  local pid
  if pid="$(running_pid)"; then
    local ready="not accepting CQL yet"
    port_open "$CQL_PORT" && ready="CQL on $HOST:$CQL_PORT"
    echo "cassandra: running (pid $pid, $ready, data $DATA_DIR)"
    return 0
  fi
  echo "cassandra: not running"
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
