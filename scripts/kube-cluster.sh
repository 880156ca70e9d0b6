#!/usr/bin/env bash
# A whole single-node Kubernetes cluster for the integration tier, from nothing: the test API
# server of tools/kube-apiserver (scripts/kube-apiserver.sh), kube-controller-manager,
# kube-scheduler, and a node: containerd + runc, a kubelet, a bridge CNI and kube-proxy. Pods are
# real containers. Every binary comes from one Go build of the tools/kube-apiserver module
# (k8s.io/kubernetes v1.36.3); images are built locally (no registry) and imported into
# containerd. What this machine needs and why: docs/KUBERNETES-CLUSTER.md.
#
#   scripts/kube-cluster.sh install          build the binaries (one go build; skipped if up to date)
#   scripts/kube-cluster.sh start            start everything, wait for the node to be Ready;
#                                            prints the kubeconfig path on stdout
#   scripts/kube-cluster.sh load-image REF…  copy podman images into the node's containerd
#   scripts/kube-cluster.sh stop             tear down; leaves no container, shim, mount, netns,
#                                            veth, bridge or iptables chain behind (idempotent)
#   scripts/kube-cluster.sh status           what runs (exit 0 = the API server runs, 3 = not)
#   scripts/kube-cluster.sh api GET /api/v1/nodes   one API request as the superuser (no kubectl)
#
# NEXUS_CLUSTER_DNS=<ip> gives the kubelet's pods a cluster DNS Service on that ClusterIP
# (kubelet clusterDNS, clusterDomain cluster.local); scripts/cluster-dns.sh deploys CoreDNS there.
# Unset: no cluster DNS (pods' resolv.conf names no server).
#
# NEXUS_CLUSTER_NODE=none starts the control plane only (API server, controller manager,
# scheduler): no containerd, kubelet, CNI or kube-proxy, nothing that needs root, for simulated
# nodes (scripts/kwok.sh).
#
# Requires (real node): root, containerd, runc and containernetworking-plugins (Debian packages),
# podman (images), iptables, ip; Go for the build.
set -euo pipefail

log() { printf 'kube-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APISERVER_SH="$ROOT/scripts/kube-apiserver.sh"

KUBE_DIR="${NEXUS_KUBE_DIR:-$PWD/.kube-test}"
export NEXUS_KUBE_DIR="$KUBE_DIR"
NODE_MODE="${NEXUS_CLUSTER_NODE:-real}"
NODE_IP="${NEXUS_CLUSTER_NODE_IP:-10.254.254.1}"
NODE_NAME="${NEXUS_CLUSTER_NODE_NAME:-nexus-node}"
POD_CIDR="${NEXUS_CLUSTER_POD_CIDR:-10.244.0.0/24}"
BRIDGE="${NEXUS_CLUSTER_BRIDGE:-nexusbr0}"
CNI_BIN="${NEXUS_CLUSTER_CNI_BIN:-/usr/lib/cni}"
READY_TIMEOUT="${NEXUS_CLUSTER_READY_TIMEOUT:-120}"
CLUSTER_DNS="${NEXUS_CLUSTER_DNS:-}"
PAUSE_IMAGE="localhost/nexus-pause:3.10"

BIN_DIR="$KUBE_DIR/bin"
C_DIR="$KUBE_DIR/cluster"                  # all state of one cluster; wiped on start
MARKER="$C_DIR/.nexus-kube-cluster"        # guards the rm -rf
CTRD_SOCK="$C_DIR/containerd/containerd.sock"
KUBELET_ROOT="$C_DIR/kubelet"
CNI_CONF_DIR="$C_DIR/cni/net.d"
CNI_IPAM_DIR="$C_DIR/cni/ipam"
STATE="$C_DIR/state"                       # what start changed on the host, for stop to undo

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
  cat <<EOF
environment (defaults in brackets):
  NEXUS_KUBE_DIR               binaries, Go caches, cluster state [\$PWD/.kube-test]
  NEXUS_CLUSTER_NODE           real | none [real]
  NEXUS_CLUSTER_NODE_IP        the node's address, added to lo (must not be loopback) [10.254.254.1]
  NEXUS_CLUSTER_NODE_NAME      [nexus-node]
  NEXUS_CLUSTER_POD_CIDR       pod addresses on the bridge [10.244.0.0/24]
  NEXUS_CLUSTER_BRIDGE         the bridge link's name [nexusbr0]
  NEXUS_CLUSTER_READY_TIMEOUT  seconds to wait for the node to be Ready [120]
  NEXUS_CLUSTER_DNS            ClusterIP of the cluster DNS Service the kubelet gives pods, in the
                               service range 10.0.0.0/16 (scripts/cluster-dns.sh) [none]
  and scripts/kube-apiserver.sh's (NEXUS_KUBE_GOMODCACHE, NEXUS_KUBE_GOCACHE, …)

files (under \$NEXUS_KUBE_DIR/cluster): <component>.log, kubeconfig (from the API server's run dir)
pods reach the host on \$NEXUS_CLUSTER_NODE_IP and the API server through the "kubernetes" Service.
EOF
}

elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------------------------------------- #
# the API, with the superuser kubeconfig (no kubectl needed)                                   #
# ------------------------------------------------------------------------------------------- #
kubeconfig() { echo "$KUBE_DIR/run/kubeconfig"; }

# api METHOD PATH [BODY]: prints the response body; fails on HTTP errors.
api() {
  local kc server token ca
  kc="$(kubeconfig)"
  [[ -s "$kc" ]] || return 1
  server=$(awk '/server:/ {print $2; exit}' "$kc")
  token=$(awk '/token:/ {print $2; exit}' "$kc")
  ca="$C_DIR/ca.crt"
  mkdir -p "$C_DIR"   # a teardown of a previous cluster's state may have removed it
  [[ -s "$ca" ]] || awk '/certificate-authority-data:/ {print $2; exit}' "$kc" | base64 -d >"$ca"
  local -a body=()
  [[ $# -ge 3 ]] && body=(-H 'Content-Type: application/json' --data-binary "$3")
  curl -fsS --max-time 20 --cacert "$ca" -H "Authorization: Bearer $token" -X "$1" \
    "${body[@]}" "$server$2"
}

# ------------------------------------------------------------------------------------------- #
# processes                                                                                    #
# ------------------------------------------------------------------------------------------- #
# spawn NAME BINARY ARGS…: detached, logs in $C_DIR/NAME.log, pid in $C_DIR/NAME.pid.
spawn() {
  local name=$1
  shift
  nohup setsid "$@" >"$C_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$C_DIR/$name.pid"
}

pid_of() {
  local f="$C_DIR/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid=$(<"$f")
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # Guards against PID reuse: the process must run a binary of ours.
  grep -qF -- "$KUBE_DIR" "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

# terminate NAME [SECONDS]: TERM, then KILL after SECONDS (default 20).
terminate() {
  local name=$1 wait_s=${2:-20} pid i
  pid=$(pid_of "$name") || { rm -f "$C_DIR/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) still alive after ${wait_s}s; KILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$C_DIR/$name.pid"
}

# expect_alive NAME: fail with its log if it died.
expect_alive() {
  pid_of "$1" >/dev/null && return 0
  log "error: $1 exited; the end of its log:"
  tail -n 40 "$C_DIR/$1.log" >&2 || true
  return 1
}

# wait_for WHAT SECONDS COMMAND…: poll COMMAND every 0.2 s.
wait_for() {
  local what=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "error: $what: not after ${secs}s"; return 1; }
    sleep 0.2
  done
}

# ------------------------------------------------------------------------------------------- #
# install                                                                                      #
# ------------------------------------------------------------------------------------------- #
cmd_install() { "$APISERVER_SH" install >/dev/null; }

check_prereqs() {
  [[ $EUID -eq 0 ]] || die "a real node needs root (containerd, mounts, network); NEXUS_CLUSTER_NODE=none runs the control plane without"
  # shellcheck source=lib/apt.sh
  source "$ROOT/scripts/lib/apt.sh"
  apt_ensure kube-cluster containerd:containerd ctr:containerd runc:runc podman:podman ip:iproute2 \
    iptables:iptables curl:curl python3:python3 "$CNI_BIN/bridge:containernetworking-plugins" \
    || die "cannot install the node's packages"
  local c
  for c in "$CNI_BIN/bridge" "$CNI_BIN/host-local" "$CNI_BIN/portmap" "$CNI_BIN/loopback"; do
    [[ -x "$c" ]] || die "$c is missing (Debian: containernetworking-plugins; or set NEXUS_CLUSTER_CNI_BIN)"
  done
  [[ "$NODE_IP" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ && "$NODE_IP" != 127.* ]] \
    || die "NEXUS_CLUSTER_NODE_IP='$NODE_IP' must be a non-loopback IPv4 address"
  [[ -z "$CLUSTER_DNS" || "$CLUSTER_DNS" =~ ^10\.0\.[0-9]+\.[0-9]+$ ]] \
    || die "NEXUS_CLUSTER_DNS='$CLUSTER_DNS' must be an address of the service range 10.0.0.0/16"
}

# ------------------------------------------------------------------------------------------- #
# start                                                                                        #
# ------------------------------------------------------------------------------------------- #
write_containerd_config() {
  mkdir -p "$C_DIR/containerd/root" "$C_DIR/containerd/state" "$CNI_CONF_DIR" "$CNI_IPAM_DIR"
  cat >"$C_DIR/containerd/config.toml" <<EOF
version = 2
root = "$C_DIR/containerd/root"
state = "$C_DIR/containerd/state"
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # runc cannot set oom_score_adj to -998 here (no CAP_SYS_RESOURCE): without this every pod
  # sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$CNI_CONF_DIR"
EOF
  cat >"$CNI_CONF_DIR/10-nexus.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "nexus",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_IPAM_DIR",
        "ranges": [[{ "subnet": "$POD_CIDR" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

write_kubelet_config() {
  mkdir -p "$KUBELET_ROOT" "$C_DIR/pod-logs"
  cat >"$C_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
# cgroup v1 hybrid layout: runc treats it as v1; the kubelet refuses v1 unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
maxOpenFiles: 20000
resolvConf: ""
podLogsDir: $C_DIR/pod-logs
# Thresholds must be positive (all-zero makes the kubelet exit); these only evict on a full disk.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# The test API server has no kubelet client certificate: logs/exec reach the kubelet anonymously.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
staticPodPath: ""
# Under the cluster's directory rather than /usr/libexec/kubernetes (shared with any other cluster
# on the machine, e.g. a control plane for kwok whose controller manager recreates it).
volumePluginDir: $C_DIR/volume-plugins
EOF
  if [[ -n "$CLUSTER_DNS" ]]; then
    # Pods with dnsPolicy ClusterFirst (the default) get this nameserver and the search path
    # <namespace>.svc.cluster.local svc.cluster.local cluster.local.
    printf 'clusterDNS: [%s]\nclusterDomain: cluster.local\n' "$CLUSTER_DNS" >>"$C_DIR/kubelet.yaml"
  fi
}

write_proxy_config() {
  cat >"$C_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $(kubeconfig)}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: ""
metricsBindAddress: ""
# Do not touch system limits (nf_conntrack_max): rlimits and sysctls are not ours to change.
conntrack: {maxPerCore: 0}
EOF
}

# The pod sandbox image: FROM scratch + tools/kube-apiserver/cmd/pause.
build_pause_image() {
  local ctx="$C_DIR/pause-image"
  mkdir -p "$ctx"
  cp "$BIN_DIR/pause" "$ctx/pause"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Containerfile"
  podman build --quiet --runtime runc -f "$ctx/Containerfile" -t "$PAUSE_IMAGE" "$ctx" >/dev/null \
    || die "podman build of the pause image failed"
}

cmd_load_image() {
  (($# > 0)) || die "load-image needs at least one image reference"
  [[ -S "$CTRD_SOCK" ]] || die "the node's containerd is not running (scripts/kube-cluster.sh start)"
  local ref archive t0
  for ref in "$@"; do
    t0=$EPOCHREALTIME
    archive="$C_DIR/image.tar"
    podman save --quiet --format docker-archive -o "$archive" "$ref" || die "podman save $ref failed (is it built?)"
    ctr -a "$CTRD_SOCK" -n k8s.io images import --no-unpack=false "$archive" >/dev/null \
      || die "ctr images import of $ref failed"
    rm -f "$archive"
    log "image $ref loaded into the node in $(elapsed_since "$t0")s"
  done
}

node_ready() {
  api GET "/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
n = json.load(sys.stdin)
ok = any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
taints = [t["key"] for t in n["spec"].get("taints", [])]
sys.exit(0 if ok and not taints else 1)'
}

default_sa() { api GET /api/v1/namespaces/default/serviceaccounts/default; }

kubernetes_endpoint() {
  api GET /api/v1/namespaces/default/endpoints/kubernetes | grep -qF "\"$NODE_IP\""
}

cmd_start() {
  if pid_of kube-controller-manager >/dev/null; then
    log "already running"
    kubeconfig
    return 0
  fi
  [[ "$NODE_MODE" == real || "$NODE_MODE" == none ]] || die "NEXUS_CLUSTER_NODE='$NODE_MODE' must be real or none"
  [[ "$READY_TIMEOUT" =~ ^[0-9]+$ ]] || die "NEXUS_CLUSTER_READY_TIMEOUT='$READY_TIMEOUT' is not a number"
  [[ "$NODE_MODE" == real ]] && check_prereqs
  cmd_install
  if [[ -e "$C_DIR" ]]; then
    [[ -f "$MARKER" ]] || die "$C_DIR exists but was not made by this script; refusing to use it"
    log "a previous cluster's state is in $C_DIR: tearing it down first"
    cmd_stop
  fi
  mkdir -p "$C_DIR"
  touch "$MARKER"
  : >"$STATE"
  local t0=$EPOCHREALTIME kc where
  trap 'log "start failed; tearing down"; cmd_stop || true' ERR

  if [[ "$NODE_MODE" == real ]]; then
    # The node's address: the kubelet refuses a loopback node IP. A /32 on lo is only reachable
    # from this host (and its pods, through the bridge's gateway).
    if ! ip -4 addr show dev lo | grep -qF " $NODE_IP/"; then
      ip addr add "$NODE_IP/32" dev lo
      echo "lo_addr=$NODE_IP" >>"$STATE"
    fi
    [[ -d /var/lib/kubelet/device-plugins ]] || echo "rm_dir=/var/lib/kubelet" >>"$STATE"
    echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)" >>"$STATE"
    ls /var/run/netns 2>/dev/null | sed 's/^/netns=/' >>"$STATE" || true
    # The portmap plugin's chains are shared with other CNI users (podman): only removed on stop
    # if none existed before.
    echo "cni_chains=$(iptables-save -t nat 2>/dev/null | grep -c '^:CNI-' || true)" >>"$STATE"
    echo 1 >/proc/sys/net/ipv4/ip_forward
    write_containerd_config
    spawn containerd containerd --config "$C_DIR/containerd/config.toml"
    wait_for "containerd's socket" 30 test -S "$CTRD_SOCK"
    build_pause_image
    cmd_load_image "$PAUSE_IMAGE"
    NEXUS_KUBE_NODE_IP="$NODE_IP" "$APISERVER_SH" start >/dev/null
  else
    "$APISERVER_SH" start >/dev/null
  fi
  kc="$(kubeconfig)"
  api GET /version >/dev/null || die "the API server does not answer"  # also writes $C_DIR/ca.crt

  # The controllers: Job, garbage collector, TTL-after-finished, Deployment/ReplicaSet,
  # ServiceAccount, namespace, node lifecycle (removes the not-ready taint), endpoints, root CA
  # publisher, … (every default controller). No serving port: nothing scrapes them here, and
  # fixed ports would collide with another cluster on the machine.
  spawn kube-controller-manager "$BIN_DIR/kube-controller-manager" --kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --leader-elect=false --secure-port=0 --controllers='*' \
    --root-ca-file="$C_DIR/ca.crt" --flex-volume-plugin-dir="$C_DIR/volume-plugins" \
    --node-monitor-grace-period=20s --concurrent-job-syncs=20 \
    --kube-api-qps=200 --kube-api-burst=400
  spawn kube-scheduler "$BIN_DIR/kube-scheduler" --kubeconfig="$kc" \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --leader-elect=false --secure-port=0 --kube-api-qps=200 --kube-api-burst=400
  sleep 0.5
  expect_alive kube-controller-manager
  expect_alive kube-scheduler

  if [[ "$NODE_MODE" == real ]]; then
    write_kubelet_config
    spawn kubelet "$BIN_DIR/kubelet" --kubeconfig="$kc" --config="$C_DIR/kubelet.yaml" \
      --container-runtime-endpoint="unix://$CTRD_SOCK" --root-dir="$KUBELET_ROOT" \
      --cert-dir="$KUBELET_ROOT/pki" --node-ip="$NODE_IP" --hostname-override="$NODE_NAME"
    write_proxy_config
    spawn kube-proxy "$BIN_DIR/kube-proxy" --config="$C_DIR/kube-proxy.yaml"
    if ! wait_for "node $NODE_NAME Ready and untainted" "$READY_TIMEOUT" node_ready; then
      for c in containerd kubelet kube-proxy kube-controller-manager kube-scheduler; do
        printf -- '----- %s -----\n' "$c" >&2; tail -n 15 "$C_DIR/$c.log" >&2 || true
      done
      false
    fi
    wait_for "the kubernetes Service's endpoint $NODE_IP" 30 kubernetes_endpoint
  fi
  wait_for "the default ServiceAccount" 30 default_sa
  trap - ERR
  if [[ "$NODE_MODE" == real ]]; then where="node $NODE_NAME at $NODE_IP"; else where="no node (NEXUS_CLUSTER_NODE=none)"; fi
  log "ready in $(elapsed_since "$t0")s ($where; logs in $C_DIR)"
  echo "$kc"
}

# ------------------------------------------------------------------------------------------- #
# stop                                                                                         #
# ------------------------------------------------------------------------------------------- #
# drop_chains PATTERN: removes the iptables/ip6tables chains whose names match the extended regex
# PATTERN (in every table) and every rule that jumps to them. The kubelet (KUBE-FIREWALL,
# KUBE-KUBELET-CANARY), kube-proxy (whose --cleanup misses a few) and the portmap plugin
# (CNI-HOSTPORT-*) leave theirs behind.
drop_chains() {
  local pat=$1 ipt t r c
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for t in filter nat mangle; do
      "$ipt" -t "$t" -S >/dev/null 2>&1 || continue
      "$ipt" -t "$t" -S | { grep -E -- "^-A .* -j ($pat)( |\$)" || true; } | while read -r r; do
        eval "$ipt -t $t ${r/#-A/-D}" 2>/dev/null || true
      done
      "$ipt" -t "$t" -S | awk '/^-N / { print $2 }' | { grep -E -- "^($pat)\$" || true; } | while read -r c; do
        "$ipt" -t "$t" -F "$c" 2>/dev/null || true
      done
      "$ipt" -t "$t" -S | awk '/^-N / { print $2 }' | { grep -E -- "^($pat)\$" || true; } | while read -r c; do
        "$ipt" -t "$t" -X "$c" 2>/dev/null || true
      done
    done
  done
}

state_get() { [[ -f "$STATE" ]] && sed -n "s/^$1=//p" "$STATE"; }

# Unmounts everything under $1, deepest first (the kubelet bind-mounts its root onto itself;
# unmounting the top first would only ever be busy).
unmount_under() {
  local m
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
  done
}

leftovers() {
  local found=0 m
  m=$(awk -v d="$C_DIR" 'index($2, d) == 1 { print $2 }' /proc/self/mounts)
  [[ -n "$m" ]] && { log "left behind: mounts: $m"; found=1; }
  # Processes naming the cluster's directory, except this script and its callers.
  local -a mine=()
  local p=$$
  while [[ "$p" =~ ^[0-9]+$ && "$p" -gt 1 ]]; do
    mine+=("$p")
    p=$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null) || break
  done
  m=$(pgrep -f -- "$C_DIR" | grep -vxF -f <(printf '%s\n' "${mine[@]}") || true)
  [[ -n "$m" ]] && { log "left behind: processes: $(ps -o pid=,args= -p "${m//$'\n'/,}" | cut -c1-120)"; found=1; }
  if ip link show "$BRIDGE" >/dev/null 2>&1; then log "left behind: link $BRIDGE"; found=1; fi
  # Network namespaces that did not exist when the cluster started (the CNI's cni-<uuid>).
  m=$(comm -13 <(state_get netns | sort) <(ls /var/run/netns 2>/dev/null | sort) | tr '\n' ' ')
  [[ -n "${m// /}" ]] && { log "left behind: network namespaces $m"; found=1; }
  m=$(ip -o link show type veth 2>/dev/null | grep -F "master $BRIDGE" || true)
  [[ -n "$m" ]] && { log "left behind: veths: $m"; found=1; }
  local chains='KUBE-'
  [[ "$(state_get cni_chains)" == 0 ]] && chains='KUBE-|CNI-'
  m=$(iptables-save 2>/dev/null | grep -E "^:($chains)" | cut -d' ' -f1 | tr '\n' ' ' || true)
  [[ -n "$m" ]] && { log "left behind: iptables chains $m"; found=1; }
  return $found
}

cmd_stop() {
  [[ -d "$C_DIR" ]] || { "$APISERVER_SH" stop >/dev/null 2>&1 || true; log "not running"; return 0; }
  [[ -f "$MARKER" ]] || die "$C_DIR was not made by this script; refusing to touch it"
  local t0=$EPOCHREALTIME
  # Controllers first: nothing recreates pods while the node is emptied.
  terminate kube-scheduler
  terminate kube-controller-manager
  terminate kubelet
  if [[ -S "$CTRD_SOCK" ]] && pid_of containerd >/dev/null; then
    # Every sandbox and container, through the CRI: the runtime runs the CNI DEL (netns, veth,
    # IPAM) and removes their mounts. Shims and pause processes outlive containerd otherwise.
    "$BIN_DIR/cri-clean" "unix://$CTRD_SOCK" >"$C_DIR/cri-clean.log" 2>&1 \
      || { log "cri-clean reported errors:"; cat "$C_DIR/cri-clean.log" >&2; }
  fi
  if [[ -f "$C_DIR/kube-proxy.yaml" ]]; then
    terminate kube-proxy
    "$BIN_DIR/kube-proxy" --cleanup --config="$C_DIR/kube-proxy.yaml" >"$C_DIR/kube-proxy-cleanup.log" 2>&1 || true
  fi
  terminate containerd 30
  # Shims of a containerd that died without cleaning (their cmdline names our socket).
  pkill -KILL -f -- "containerd-shim-runc-v2 .*-address $CTRD_SOCK" 2>/dev/null || true
  "$APISERVER_SH" stop >/dev/null 2>&1 || true
  unmount_under "$C_DIR"
  ip link del "$BRIDGE" 2>/dev/null || true
  drop_chains 'KUBE-[A-Z0-9-]+'
  [[ "$(state_get cni_chains)" == 0 ]] && drop_chains 'CNI-[A-Za-z0-9-]+'

  local v
  v=$(state_get ip_forward); [[ -n "$v" ]] && echo "$v" >/proc/sys/net/ipv4/ip_forward
  v=$(state_get lo_addr); [[ -n "$v" ]] && { ip addr del "$v/32" dev lo 2>/dev/null || true; }
  while read -r v; do
    [[ -n "$v" ]] && { rm -rf "$v" 2>/dev/null || log "cannot remove $v (in use by another kubelet?)"; }
  done < <(state_get rm_dir)
  # The kubelet's cgroups (cgroupsPerQOS), empty once the containers are gone.
  find /sys/fs/cgroup -depth -type d -path '*/kubepods*' -exec rmdir {} + 2>/dev/null || true
  local clean=0
  leftovers || clean=1
  rm -rf "${C_DIR:?}"
  if ((clean)); then
    log "stopped in $(elapsed_since "$t0")s, but something was left behind (above)"
    return 1
  fi
  log "stopped in $(elapsed_since "$t0")s; nothing left behind"
}

cmd_status() {
  local c pid
  for c in containerd kube-controller-manager kube-scheduler kubelet kube-proxy; do
    if pid=$(pid_of "$c"); then echo "$c: running (pid $pid)"; else echo "$c: not running"; fi
  done
  "$APISERVER_SH" status
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  load-image) shift; cmd_load_image "$@" ;;
  api) shift; (($# >= 2)) || die "usage: api METHOD PATH [JSON BODY]"; api "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
