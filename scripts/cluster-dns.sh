#!/usr/bin/env bash
# Cluster DNS for the single-node cluster of scripts/kube-cluster.sh: CoreDNS, as in a kubeadm
# cluster (a Deployment "coredns" and the Service "kube-dns" in kube-system, at the ClusterIP the
# kubelet hands pods as their nameserver), so that pods reach Services by their DNS names
# (<service>.<namespace>.svc.cluster.local, headless Services included).
#
#   scripts/cluster-dns.sh install   go build tools/coredns (CoreDNS v1.14 as a library, with the
#                                    kubernetes, cache, errors, log, health, ready and loadbalance
#                                    plugins only) into $NEXUS_KUBE_DIR/bin/coredns (skipped if up
#                                    to date); prints its path
#   scripts/cluster-dns.sh start     on the running cluster (started with NEXUS_CLUSTER_DNS=<ip>):
#                                    builds the image (FROM scratch + the static binary, podman),
#                                    loads it into the node, creates CoreDNS's ServiceAccount,
#                                    ClusterRole(Binding), ConfigMap, Deployment and Service, waits
#                                    until its pod is Ready and the Service answers a query for
#                                    kubernetes.default.svc.cluster.local
#
# There is no stop: `scripts/kube-cluster.sh stop` removes the cluster and everything in it. The
# image stays in podman's store (like the cluster's pause image), to be reused.
#
# Environment (defaults in brackets):
#   NEXUS_KUBE_DIR            the cluster's directory (scripts/kube-cluster.sh) [$PWD/.kube-test]
#   NEXUS_CLUSTER_DNS         the kube-dns Service's ClusterIP; must be what the cluster was
#                             started with [10.0.0.10]
#   NEXUS_KUBE_GOMODCACHE, NEXUS_KUBE_GOCACHE, NEXUS_KUBE_PRUNE_BUILD_CACHE
#                             as for scripts/kube-apiserver.sh (the build shares its caches)
# Requires: go, podman, curl, python3; root (the cluster's containerd).
set -euo pipefail

log() { printf 'cluster-dns: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC_DIR="$ROOT/tools/coredns"
KUBE_DIR="${NEXUS_KUBE_DIR:-$PWD/.kube-test}"
export NEXUS_KUBE_DIR="$KUBE_DIR"
DNS_IP="${NEXUS_CLUSTER_DNS:-10.0.0.10}"
GOMODCACHE_DIR="${NEXUS_KUBE_GOMODCACHE:-$KUBE_DIR/gomod}"
GOCACHE_DIR="${NEXUS_KUBE_GOCACHE:-$KUBE_DIR/gocache}"
BIN="$KUBE_DIR/bin/coredns"
C_DIR="$KUBE_DIR/cluster"
NS=kube-system

elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
go_env() { env GOMODCACHE="$GOMODCACHE_DIR" GOCACHE="$GOCACHE_DIR" GOFLAGS="-modcacherw" GOTOOLCHAIN=local go "$@"; }
coredns_version() { (cd "$SRC_DIR" && go_env list -m -f '{{.Version}}' github.com/coredns/coredns); }

# ------------------------------------------------------------------------------------------- #
# install                                                                                      #
# ------------------------------------------------------------------------------------------- #
up_to_date() {
  local f
  [[ -x "$BIN" ]] || return 1
  while IFS= read -r f; do
    [[ "$BIN" -nt "$f" ]] || return 1
  done < <(find "$SRC_DIR" -name '*.go' -o -name go.mod -o -name go.sum)
}

cmd_install() {
  if up_to_date; then
    log "up to date: $BIN"
    echo "$BIN"
    return 0
  fi
  command -v go >/dev/null || die "go not found on PATH"
  mkdir -p "$KUBE_DIR/bin"
  local t0=$EPOCHREALTIME
  log "go build of CoreDNS (tools/coredns; cold: 2-5 minutes on 2 cores, ~650 MB of build cache)…"
  (cd "$SRC_DIR" && go_env mod download) || die "go mod download failed"
  # Static: the image is FROM scratch.
  (cd "$SRC_DIR" && CGO_ENABLED=0 go_env build -trimpath -gcflags=all=-dwarf=false -ldflags '-s -w' -o "$BIN.new" .) \
    || die "go build failed"
  mv -f "$BIN.new" "$BIN"
  log "  built in $(elapsed_since "$t0")s: $BIN ($(du -m "$BIN" | cut -f1) MiB)"
  if [[ "${NEXUS_KUBE_PRUNE_BUILD_CACHE:-0}" == 1 ]]; then
    log "  pruning the Go build cache $GOCACHE_DIR (NEXUS_KUBE_PRUNE_BUILD_CACHE=1)"
    go_env clean -cache || die "go clean -cache failed"
  fi
  echo "$BIN"
}

# ------------------------------------------------------------------------------------------- #
# start                                                                                        #
# ------------------------------------------------------------------------------------------- #
KC="$KUBE_DIR/run/kubeconfig"
# api METHOD PATH [YAML-OR-JSON BODY]: as the cluster's superuser; prints the body, fails on >= 400.
api() {
  local server token
  server=$(awk '/server:/ {print $2; exit}' "$KC")
  token=$(awk '/token:/ {print $2; exit}' "$KC")
  [[ -s "$C_DIR/ca.crt" ]] || awk '/certificate-authority-data:/ {print $2; exit}' "$KC" | base64 -d >"$C_DIR/ca.crt"
  local -a body=()
  [[ $# -ge 3 ]] && body=(-H 'Content-Type: application/yaml' --data-binary "$3")
  curl -fsS --max-time 20 --cacert "$C_DIR/ca.crt" -H "Authorization: Bearer $token" \
    -H 'Accept: application/json' -X "$1" "${body[@]}" "$server$2"
}

# A DNS query for NAME (type A) to SERVER:53 over UDP; prints the addresses of the answer.
dns_query() {
  python3 - "$1" "$2" <<'PY'
import random, socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
qid = random.randrange(65536)
q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
q += struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(q, (server, 53))
r, _ = s.recvfrom(4096)
rid, flags, qd, an = struct.unpack(">HHHH", r[:8])
if rid != qid or flags & 0xF != 0:
    sys.exit(f"rcode {flags & 0xF}")
i = 12
for _ in range(qd):  # skip the question
    while r[i]: i += r[i] + 1
    i += 5
for _ in range(an):
    if r[i] & 0xC0 == 0xC0: i += 2
    else:
        while r[i]: i += r[i] + 1
        i += 1
    typ, _, _, rdlen = struct.unpack(">HHIH", r[i:i + 10])
    i += 10
    if typ == 1: print(socket.inet_ntoa(r[i:i + 4]))
    i += rdlen
PY
}

manifests() { # image
  cat <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: $NS}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: $NS}]
---
# kubeadm's Corefile, less forward (no upstream resolver here) and on port 1053 (non-root).
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: $NS}
data:
  Corefile: |
    .:1053 {
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: $NS
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      # Not itself: the node's resolver (none here).
      dnsPolicy: Default
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: coredns
          image: $1
          imagePullPolicy: Never
          args: [-conf, /etc/coredns/Corefile]
          ports:
            - {name: dns, containerPort: 1053, protocol: UDP}
            - {name: dns-tcp, containerPort: 1053, protocol: TCP}
          resources:
            requests: {cpu: 50m, memory: 32Mi}
            limits: {memory: 128Mi}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          livenessProbe:
            httpGet: {path: /health, port: 8080}
            initialDelaySeconds: 10
            periodSeconds: 10
          readinessProbe:
            httpGet: {path: /ready, port: 8181}
            periodSeconds: 2
          volumeMounts:
            - {name: config, mountPath: /etc/coredns, readOnly: true}
      volumes:
        - name: config
          configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: $NS
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, targetPort: 1053, protocol: UDP}
    - {name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}
EOF
}

create() { # collection-path yaml
  api POST "$1" "$2" >/dev/null || die "POST $1 failed"
}

deployment_ready() {
  api GET "/apis/apps/v1/namespaces/$NS/deployments/coredns" | python3 -c '
import json, sys
d = json.load(sys.stdin); s = d.get("status", {})
sys.exit(0 if s.get("readyReplicas", 0) >= 1 and s.get("observedGeneration", 0) >= d["metadata"]["generation"] else 1)'
}

# wait_for WHAT SECONDS COMMAND…
wait_for() {
  local what=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "error: $what: not after ${secs}s"; return 1; }
    sleep 0.5
  done
}

dump() {
  log "CoreDNS pods and events in $NS:"
  api GET "/api/v1/namespaces/$NS/pods?labelSelector=k8s-app%3Dkube-dns" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    print(p["metadata"]["name"], p["status"].get("phase"), json.dumps(p["status"].get("containerStatuses", [])))' >&2 || true
  api GET "/api/v1/namespaces/$NS/events" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["items"][-20:]:
    print(e.get("reason"), e["involvedObject"]["name"], e.get("message", ""))' >&2 || true
  local f
  for f in "$C_DIR"/pod-logs/"$NS"_coredns-*/coredns/*.log; do
    [[ -f $f ]] && { log "log $f:"; tail -n 30 "$f" >&2; }
  done
}

cmd_start() {
  [[ -s "$KC" ]] && api GET /version >/dev/null 2>&1 || die "no cluster runs in $KUBE_DIR (scripts/kube-cluster.sh start)"
  grep -qxF "clusterDNS: [$DNS_IP]" "$C_DIR/kubelet.yaml" 2>/dev/null \
    || die "the cluster's kubelet was not started with NEXUS_CLUSTER_DNS=$DNS_IP (its pods would not use this DNS)"
  cmd_install >/dev/null
  local t0=$EPOCHREALTIME version image ctx
  version="$(coredns_version)"
  image="localhost/nexus-coredns:${version#v}"
  ctx="$C_DIR/coredns-image"
  mkdir -p "$ctx"
  cp "$BIN" "$ctx/coredns"
  printf 'FROM scratch\nCOPY coredns /coredns\nUSER 65532:65532\nENTRYPOINT ["/coredns"]\n' >"$ctx/Containerfile"
  podman build --quiet --runtime runc -f "$ctx/Containerfile" -t "$image" "$ctx" >/dev/null \
    || die "podman build of $image failed"
  rm -rf "$ctx"
  "$ROOT/scripts/kube-cluster.sh" load-image "$image"
  local doc
  while IFS= read -r -d $'\x1e' doc; do
    [[ -n "${doc//[[:space:]]/}" ]] || continue
    local kind ns path
    kind=$(sed -n 's/^kind: *//p' <<<"$doc" | head -n1)
    case $kind in
      ServiceAccount) path=/api/v1/namespaces/$NS/serviceaccounts ;;
      ConfigMap) path=/api/v1/namespaces/$NS/configmaps ;;
      Service) path=/api/v1/namespaces/$NS/services ;;
      Deployment) path=/apis/apps/v1/namespaces/$NS/deployments ;;
      ClusterRole) path=/apis/rbac.authorization.k8s.io/v1/clusterroles ;;
      ClusterRoleBinding) path=/apis/rbac.authorization.k8s.io/v1/clusterrolebindings ;;
      *) die "unexpected kind '$kind'" ;;
    esac
    create "$path" "$doc"
  done < <(manifests "$image" | awk '/^---$/ { printf "\x1e"; next } { print } END { printf "\x1e" }')
  wait_for "the CoreDNS pod Ready" 90 deployment_ready || { dump; die "CoreDNS did not become Ready"; }
  # Through the Service (kube-proxy), as pods will ask it.
  wait_for "kube-dns ($DNS_IP) answering" 30 dns_query kubernetes.default.svc.cluster.local "$DNS_IP" \
    || { dump; die "kube-dns at $DNS_IP does not answer"; }
  local answer
  answer="$(dns_query kubernetes.default.svc.cluster.local "$DNS_IP")"
  [[ "$answer" == 10.0.0.1 ]] || { dump; die "kubernetes.default.svc.cluster.local resolved to '$answer', not 10.0.0.1"; }
  log "CoreDNS ${version} ready in $(elapsed_since "$t0")s (kube-dns $DNS_IP; kubernetes.default.svc.cluster.local -> $answer)"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  -h | --help | help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
  *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
