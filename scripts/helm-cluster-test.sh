#!/usr/bin/env bash
# The Helm chart helm/nexus on a real single-node cluster (issue #20): the chart's Deployments run
# as pods of the Nexus image on a real kubelet, and a run goes all the way through them.
#
#   1. the cluster (scripts/kube-cluster.sh) with RBAC authorization (--authorization-mode=Node,RBAC)
#      and cluster DNS (NEXUS_CLUSTER_DNS, CoreDNS by scripts/cluster-dns.sh): the components
#      address each other by their Services' DNS names, as in any cluster;
#   2. Cassandra and SeaweedFS (S3) on the node IP (10.254.254.1), which pods reach; the Nexus
#      image (scripts/image.sh from NEXUS_BIN_DIR) loaded into the node;
#   3. `helm install --wait` of a single-cluster release into a namespace enforcing the
#      "restricted" Pod Security Standard, with TLS on every HTTP listener (`tls`: a certificate of
#      a private CA made here, for the Services' DNS names and the node IP): 2 schedulers,
#      1 receiver, 2 supervisors become Ready pods (the chart's own readiness probes, over HTTPS),
#      as uid 65532 on a read-only root file system, each with its ServiceAccount's mounted token
#      (in-cluster config) and nothing more;
#   4. a knapsack run submitted over https through the scheduler Service (a NodePort, kube-proxy),
#      trusting the private CA, becomes a Job created by the receiver pod in the runs namespace;
#      the demo algorithm's pod (given the CA by the chart's ConfigMap, NEXUS_CA_FILE) fetches its
#      payload and uploads its result (S3), completes over https through the receiver Service;
#      the run is COMPLETED and its result (through the signed URL) has totalValue 90;
#      a supervisor pod holds and renews the Lease nexus-supervisor;
#   5. `helm upgrade --wait` changing the config (log format): every Deployment rolls; meanwhile a
#      prober reads a run through the Service and runs are submitted: no request fails, every run
#      completes with the right result; the Lease is then held by a pod of the new supervisors;
#   6. `helm uninstall --wait`: nothing of the release left (pods included); the CRDs stay (the
#      chart's crds/ policy: Helm installs them, never deletes them).
#
# On failure: pods, events, the pods' logs (through the API server and kubelet), the stores' logs.
# Teardown: stores stopped, cluster stopped (scripts/kube-cluster.sh stop: nothing left behind),
# work dir removed. Bounded waits only; no timing assertions (phase times are printed).
#
# Usage: scripts/helm-cluster-test.sh   (root; exit 0: all good)
# Environment (defaults in brackets):
#   NEXUS_BIN_DIR              nexus and nexus-demo, for the image and the host client [target/debug]
#   NEXUS_TOOLS_DIR            helm is $NEXUS_TOOLS_DIR/bin/helm (scripts/helm-check.sh) [target/tools]
#   NEXUS_KUBE_DIR             the cluster's binaries and state (scripts/kube-cluster.sh) [$PWD/.kube-test]
#   NEXUS_HELM_IMAGE           the image the chart runs [localhost/nexus:helm]
#   NEXUS_HELM_IMAGE_BUILD     1 = build it first from NEXUS_BIN_DIR (scripts/image.sh, no smoke
#                              test); 0 = use it as it is in podman's store [1]
#   NEXUS_HELM_CASSANDRA_PORT  CQL port on the node IP [29042] (inter-node: +1000, +1001 of the
#                              port's last three digits: 7042/7043 by default)
#   NEXUS_HELM_S3_PORT         SeaweedFS S3 port on the node IP [29333] (its other ports: +100..+500,
#                              gRPC +10000)
#   NEXUS_HELM_TEST_KEEP       1 = keep the work dir (values, logs) [0]
# Requires: root, and what scripts/kube-cluster.sh, cluster-dns.sh, cassandra.sh, seaweedfs.sh
# and image.sh need; curl, python3, openssl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/nexus"
BIN="${NEXUS_BIN_DIR:-$ROOT/target/debug}"
[[ $BIN == /* ]] || BIN="$PWD/$BIN"
HELM="${NEXUS_TOOLS_DIR:-$ROOT/target/tools}/bin/helm"
IMAGE="${NEXUS_HELM_IMAGE:-localhost/nexus:helm}"
IMAGE_BUILD="${NEXUS_HELM_IMAGE_BUILD:-1}"
CQL_PORT="${NEXUS_HELM_CASSANDRA_PORT:-29042}"
S3_PORT="${NEXUS_HELM_S3_PORT:-29333}"
export NEXUS_KUBE_DIR="${NEXUS_KUBE_DIR:-$PWD/.kube-test}"
NODE_IP=10.254.254.1          # scripts/kube-cluster.sh's default node IP
DNS_IP=10.0.0.10              # the kube-dns Service (in the API server's 10.0.0.0/16)
REL=nexus                     # release name; the chart's fullname is then "nexus"
NS=nexus                      # release namespace (catalog and Lease namespace too)
RUNS_NS=nexus-runs            # the shard's runs namespace
KEYSPACE=nexus_helm
BUCKET=nexus-helm
S3_KEY=nexus
S3_SECRET=nexus-helm-secret-key
KUBE_VERSION=1.36.3

log() { printf 'helm-cluster-test: %s\n' "$*" >&2; }
START=$EPOCHREALTIME
PHASE=$EPOCHREALTIME
TIMES=()
elapsed_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
# phase NAME: records how long the steps since the previous phase took.
phase() { TIMES+=("$1 $(elapsed_since "$PHASE")s"); log "$1: $(elapsed_since "$PHASE")s"; PHASE=$EPOCHREALTIME; }

WORK="$(mktemp -d /tmp/nexus-helm-cluster.XXXXXX)"
chmod 755 "$WORK"
CLUSTER_UP=0
PROBER_PID=""

# --- the API (superuser kubeconfig of the cluster) ------------------------------------------------
# api METHOD PATH [JSON-BODY]: prints the response body; the HTTP status goes to $WORK/status.
api() {
  local method=$1 path=$2 body=${3:-}
  local -a data=()
  [[ -n $body ]] && data=(--data-binary "$body")
  curl -sS --max-time 20 --cacert "$WORK/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' -H 'Accept: application/json' -X "$method" \
    -o "$WORK/body" -w '%{http_code}' "${data[@]}" "$SERVER$path" >"$WORK/status" || return 1
  cat "$WORK/body"
}
status() { cat "$WORK/status"; }
# admin METHOD PATH [BODY]: fails unless 2xx.
admin() {
  local out
  out="$(api "$@")" || die "$1 $2: curl failed"
  [[ "$(status)" == 2* ]] || die "$1 $2: HTTP $(status): $out"
  printf '%s' "$out"
}
# json EXPR: a Python expression over the JSON on stdin (bound to `d`).
json() { python3 -c "import json, sys; d = json.load(sys.stdin); r = ($1); print(r if isinstance(r, str) else json.dumps(r))"; }
# wait_for SECONDS WHAT COMMAND...: retries COMMAND every 0.5 s until it succeeds.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for: $what"
    sleep 0.5
  done
}

# --- failure report and teardown ------------------------------------------------------------------
dump() {
  ((CLUSTER_UP)) || return 0
  local n
  for n in "$NS" "$RUNS_NS" kube-system; do
    printf '\n===== pods in %s =====\n' "$n" >&2
    api GET "/api/v1/namespaces/$n/pods" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    cs = [(c["name"], c.get("ready"), c.get("restartCount"), list(c.get("state", {}).keys()), c.get("state", {}).get("waiting", {}).get("reason"), c.get("lastState", {}).get("terminated", {}).get("reason")) for c in p["status"].get("containerStatuses", [])]
    print(p["metadata"]["name"], p["status"].get("phase"), p["status"].get("podIP"), cs)' >&2 || true
    printf '===== events in %s (last 30) =====\n' "$n" >&2
    api GET "/api/v1/namespaces/$n/events" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["items"][-30:]:
    print(e.get("type"), e.get("reason"), e["involvedObject"].get("kind"), e["involvedObject"].get("name"), (e.get("message") or "").strip()[:300])' >&2 || true
    local p
    for p in $(api GET "/api/v1/namespaces/$n/pods" | json '" ".join(i["metadata"]["name"] for i in d["items"])' 2>/dev/null); do
      printf -- '----- logs of %s/%s (tail 40) -----\n' "$n" "$p" >&2
      api GET "/api/v1/namespaces/$n/pods/$p/log?tailLines=40&timestamps=false" >&2 || true
      # The previous container's, when it restarted.
      if api GET "/api/v1/namespaces/$n/pods/$p/log?tailLines=20&previous=true" >"$WORK/prev.log" 2>/dev/null \
        && [[ "$(status)" == 200 ]]; then
        printf -- '----- previous container of %s/%s (tail 20) -----\n' "$n" "$p" >&2
        cat "$WORK/prev.log" >&2
      fi
    done
  done
  local f
  for f in "$WORK/cassandra/logs/system.log" "$WORK/seaweedfs/logs/stderr.log" "$WORK"/*.out "$WORK/prober.log"; do
    [[ -s $f ]] || continue
    printf -- '\n----- tail -n 20 %s -----\n' "$f" >&2
    tail -n 20 "$f" >&2
  done
}
die() {
  log "FAILED: $*"
  trap - ERR
  # Once: a die inside a command substitution fails its caller too.
  if [[ ! -e "$WORK/died" ]]; then
    touch "$WORK/died"
    dump || true
  fi
  exit 1
}
cleanup() {
  local rc=$?
  [[ -n $PROBER_PID ]] && kill "$PROBER_PID" 2>/dev/null
  stores_env "$ROOT/scripts/seaweedfs.sh" stop >/dev/null 2>&1 || log "seaweedfs stop failed"
  stores_env "$ROOT/scripts/cassandra.sh" stop >/dev/null 2>&1 || log "cassandra stop failed"
  if ((CLUSTER_UP)) || [[ -d "$NEXUS_KUBE_DIR/cluster" ]]; then
    "$ROOT/scripts/kube-cluster.sh" stop || { log "the cluster's teardown left something behind"; rc=1; }
  fi
  if [[ "${NEXUS_HELM_TEST_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'die "a command failed at line $LINENO"' ERR

# The stores: own directories, ports and the node IP.
stores_env() {
  env NEXUS_CASSANDRA_HOST="$NODE_IP" NEXUS_CASSANDRA_DIR="$WORK/cassandra" \
    NEXUS_CASSANDRA_PORT="$CQL_PORT" NEXUS_CASSANDRA_STORAGE_PORT="$((7000 + CQL_PORT % 1000))" \
    NEXUS_CASSANDRA_SSL_STORAGE_PORT="$((7001 + CQL_PORT % 1000))" \
    NEXUS_SEAWEED_HOST="$NODE_IP" NEXUS_SEAWEED_DIR="$WORK/seaweedfs" NEXUS_SEAWEED_S3_PORT="$S3_PORT" \
    NEXUS_SEAWEED_BUCKET="$BUCKET" NEXUS_SEAWEED_ACCESS_KEY="$S3_KEY" NEXUS_SEAWEED_SECRET_KEY="$S3_SECRET" \
    "$@"
}

# --- 0. preflight and the image -------------------------------------------------------------------
[[ $EUID -eq 0 ]] || die "needs root (the cluster's node)"
[[ -x "$BIN/nexus" && -x "$BIN/nexus-demo" ]] || die "$BIN/nexus or nexus-demo missing (cargo build -p nexus-cli -p nexus-examples)"
[[ -x "$HELM" ]] || die "$HELM missing (scripts/helm-check.sh builds it)"
for c in curl python3 podman openssl; do command -v "$c" >/dev/null || die "$c is required"; done
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
if [[ $IMAGE_BUILD == 1 ]]; then
  log "building $IMAGE from $BIN (scripts/image.sh)"
  NEXUS_BIN_DIR="$BIN" NEXUS_IMAGE="$IMAGE" NEXUS_IMAGE_SMOKE=0 bash "$ROOT/scripts/image.sh" >"$WORK/image.out" 2>&1 \
    || { cat "$WORK/image.out" >&2; die "scripts/image.sh"; }
fi
podman image exists "$IMAGE" || die "image $IMAGE not in podman's store"
# CoreDNS before the cluster starts (a cold build takes minutes; skipped when up to date).
"$ROOT/scripts/cluster-dns.sh" install >/dev/null || die "cluster-dns install"
phase "builds (image, CoreDNS)"

# --- 1. the cluster: RBAC, cluster DNS ------------------------------------------------------------
log "starting the cluster (RBAC, cluster DNS $DNS_IP)"
CLUSTER_UP=1
ADMIN_KC="$(NEXUS_CLUSTER_DNS=$DNS_IP NEXUS_KUBE_APISERVER_FLAGS="--authorization-mode=Node,RBAC" \
  "$ROOT/scripts/kube-cluster.sh" start)" || die "the cluster did not start"
kc_field() { sed -n "s/^ *$1: *//p" "$ADMIN_KC" | head -n1; }
SERVER="$(kc_field server)"
ADMIN_TOKEN="$(kc_field token)"
kc_field certificate-authority-data | base64 -d >"$WORK/ca.crt"
grep -qF -- "--authorization-mode=Node,RBAC" "/proc/$(<"$NEXUS_KUBE_DIR/run/kube-apiserver.pid")/cmdline" \
  || die "the API server was not started with --authorization-mode=Node,RBAC"
phase "cluster"
"$ROOT/scripts/cluster-dns.sh" start || die "cluster DNS"
phase "cluster DNS"

# --- 2. stores on the node IP, the image in the node ----------------------------------------------
# SeaweedFS in the background while Cassandra starts (the slower of the two).
stores_env "$ROOT/scripts/seaweedfs.sh" start >"$WORK/seaweedfs.out" 2>&1 &
weed_pid=$!
stores_env "$ROOT/scripts/cassandra.sh" start >"$WORK/cassandra.out" 2>&1 || die "cassandra start"
wait "$weed_pid" || die "seaweedfs start"
"$ROOT/scripts/kube-cluster.sh" load-image "$IMAGE"
phase "stores and image"

# --- 3. install ------------------------------------------------------------------------------------
# Pod Security admission: the release namespace enforces "restricted" (what the chart's security
# context claims); the runs namespace "baseline" (the Jobs' pods carry no security context of
# their own: see docs/DECISIONS.md, "The chart on a real cluster").
pss_ns() { # name level
  admin POST /api/v1/namespaces "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$1\",\"labels\":{\"pod-security.kubernetes.io/enforce\":\"$2\",\"pod-security.kubernetes.io/enforce-version\":\"latest\"}}}" >/dev/null
}
pss_ns "$NS" restricted
pss_ns "$RUNS_NS" baseline
# Enforced for real: a pod breaking "restricted" is refused in the release namespace.
api POST "/api/v1/namespaces/$NS/pods?dryRun=All" '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"pss-probe"},"spec":{"containers":[{"name":"c","image":"'"$IMAGE"'"}]}}' >"$WORK/pss.out" || true
[[ "$(status)" == 403 ]] && grep -q 'violates PodSecurity' "$WORK/pss.out" \
  || die "Pod Security admission does not enforce 'restricted' in $NS: HTTP $(status): $(cat "$WORK/pss.out")"
# The S3 keys as an operator would hand them: a Secret, read by extraEnv.
admin POST "/api/v1/namespaces/$NS/secrets" "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"nexus-s3\"},\"stringData\":{\"access-key\":\"$S3_KEY\",\"secret-key\":\"$S3_SECRET\"}}" >/dev/null
# TLS of the HTTP listeners: a private CA and a certificate for the Services' DNS names and the
# node IP (this host reaches the scheduler Service through a NodePort there).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=nexus-test-ca" \
  -keyout "$WORK/http-ca.key" -out "$WORK/http-ca.crt" 2>"$WORK/openssl.err" || { cat "$WORK/openssl.err" >&2; die "openssl (CA)"; }
san="IP:$NODE_IP"
for svc in scheduler receiver-shard-1 supervisor; do san+=",DNS:$REL-$svc.$NS.svc.cluster.local,DNS:$REL-$svc.$NS.svc"; done
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$REL" \
  -keyout "$WORK/http-tls.key" -out "$WORK/http-tls.csr" 2>>"$WORK/openssl.err" || { cat "$WORK/openssl.err" >&2; die "openssl (key)"; }
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san" >"$WORK/http-tls.ext"
openssl x509 -req -in "$WORK/http-tls.csr" -CA "$WORK/http-ca.crt" -CAkey "$WORK/http-ca.key" -days 2 \
  -set_serial "0x$(openssl rand -hex 16)" -extfile "$WORK/http-tls.ext" -out "$WORK/http-tls.crt" 2>>"$WORK/openssl.err" \
  || { cat "$WORK/openssl.err" >&2; die "openssl (certificate)"; }
b64() { base64 -w0 <"$1"; }
admin POST "/api/v1/namespaces/$NS/secrets" "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"nexus-http-tls\"},\"type\":\"kubernetes.io/tls\",\"data\":{\"tls.crt\":\"$(b64 "$WORK/http-tls.crt")\",\"tls.key\":\"$(b64 "$WORK/http-tls.key")\",\"ca.crt\":\"$(b64 "$WORK/http-ca.crt")\"}}" >/dev/null
IMAGE_REPO="${IMAGE%:*}"
IMAGE_TAG="${IMAGE##*:}"
values() { # log format
  cat <<EOF
image: {repository: $IMAGE_REPO, tag: "$IMAGE_TAG", pullPolicy: IfNotPresent}
store: cassandra://$NODE_IP:$CQL_PORT/$KEYSPACE
payloads: "s3://$BUCKET/runs?endpoint=http://$NODE_IP:$S3_PORT&region=us-east-1"
logFormat: $1
extraEnv:
  - name: NEXUS_S3_ACCESS_KEY_ID
    valueFrom: {secretKeyRef: {name: nexus-s3, key: access-key}}
  - name: NEXUS_S3_SECRET_ACCESS_KEY
    valueFrom: {secretKeyRef: {name: nexus-s3, key: secret-key}}
shards:
  - name: shard-1
    replicas: 1
    runsNamespace: $RUNS_NS
tls:
  enabled: true
  secretName: nexus-http-tls
  algorithmCa:
    pem: |
$(sed 's/^/      /' "$WORK/http-ca.crt")
# One 2-core node: the requests are scaled down so that the pods, a rolling upgrade's surge and
# the runs' pods fit; the limits stay the chart's.
scheduler:
  replicas: 2
  autoscaling: {enabled: false}
  service: {type: NodePort}
  resources:
    requests: {cpu: 100m, memory: 64Mi, ephemeral-storage: 64Mi}
    limits: {cpu: "2", memory: 1Gi, ephemeral-storage: 2Gi}
receiver:
  resources:
    requests: {cpu: 100m, memory: 64Mi, ephemeral-storage: 64Mi}
    limits: {cpu: "2", memory: 1Gi, ephemeral-storage: 1Gi}
supervisor:
  replicas: 2
  resources:
    requests: {cpu: 50m, memory: 64Mi, ephemeral-storage: 32Mi}
    limits: {cpu: "1", memory: 512Mi, ephemeral-storage: 256Mi}
serviceMonitor: {enabled: false}
EOF
}
values json >"$WORK/values.yaml"
helm() { "$HELM" --kubeconfig "$ADMIN_KC" "$@"; }
log "helm install (waiting for the Deployments' pods to be Ready)"
helm install "$REL" "$CHART" -n "$NS" -f "$WORK/values.yaml" --wait --timeout 300s >"$WORK/helm-install.out" 2>&1 \
  || { cat "$WORK/helm-install.out" >&2; die "helm install --wait"; }

DEPLOYS=("$REL-scheduler" "$REL-receiver-shard-1" "$REL-supervisor")
# rolled_out NAME: every replica updated, Ready and available, nothing old left.
rolled_out() {
  admin GET "/apis/apps/v1/namespaces/$NS/deployments/$1" | json '
(lambda s, want: s.get("observedGeneration", 0) >= d["metadata"]["generation"]
  and s.get("updatedReplicas", 0) == want and s.get("readyReplicas", 0) == want
  and s.get("availableReplicas", 0) == want and s.get("replicas", 0) == want)(d.get("status", {}), d["spec"]["replicas"])' \
    | grep -qx true
}
# pods_of COMPONENT: names of the release's Running pods of a component, not being deleted.
pods_of() {
  admin GET "/api/v1/namespaces/$NS/pods?labelSelector=app.kubernetes.io%2Finstance%3D$REL,app.kubernetes.io%2Fcomponent%3D$1" \
    | json '" ".join(p["metadata"]["name"] for p in d["items"] if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"])'
}
for d in "${DEPLOYS[@]}"; do
  wait_for 60 "Deployment $d rolled out" rolled_out "$d"
done
# What the kubelet runs: the image, uid 65532, read-only root, only the component's own
# ServiceAccount token (the API server's in-cluster address comes from the kubelet's env).
admin GET "/api/v1/namespaces/$NS/pods?labelSelector=app.kubernetes.io%2Finstance%3D$REL" >"$WORK/pods.json"
CHECK_PODS=$(cat <<'EOF'
import json, sys
image, rel = sys.argv[1], sys.argv[2]
pods = json.load(sys.stdin)["items"]
bad = []
for p in pods:
    name, spec, st = p["metadata"]["name"], p["spec"], p["status"]
    comp = p["metadata"]["labels"]["app.kubernetes.io/component"]
    c = spec["containers"][0]
    cs = st["containerStatuses"][0]
    sc = c.get("securityContext", {})
    checks = {
        "Running and Ready": st.get("phase") == "Running" and cs.get("ready"),
        "image": c["image"] == image,
        "uid 65532": sc.get("runAsUser") == 65532 and spec["securityContext"].get("runAsNonRoot"),
        "read-only root": sc.get("readOnlyRootFilesystem") is True,
        "readiness probe over HTTPS": c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/health/readyz"
            and c["readinessProbe"]["httpGet"].get("scheme") == "HTTPS",
        "own ServiceAccount": spec["serviceAccountName"] == f"{rel}-{comp}",
        "token mounted": any(v.get("projected") and any("serviceAccountToken" in s for s in v["projected"]["sources"]) for v in spec.get("volumes", [])),
        "no restart": cs.get("restartCount") == 0,
    }
    failed = [k for k, ok in checks.items() if not ok]
    print(f"{name}: {comp}, {st.get('podIP')}, " + ("ok" if not failed else "FAILED " + ", ".join(failed)))
    bad += failed
counts = {}
for p in pods:
    counts[p["metadata"]["labels"]["app.kubernetes.io/component"]] = counts.get(p["metadata"]["labels"]["app.kubernetes.io/component"], 0) + 1
print("pods per component:", counts)
sys.exit(1 if bad or counts != {"scheduler": 2, "receiver": 1, "supervisor": 2} else 0)
EOF
)
python3 -c "$CHECK_PODS" "$IMAGE" "$REL" <"$WORK/pods.json" >"$WORK/pods.txt" \
  || { cat "$WORK/pods.txt" >&2; die "the release's pods are not what the chart says"; }
cat "$WORK/pods.txt" >&2
phase "install (pods Ready)"

# --- 4. a run through the Service ------------------------------------------------------------------
# The catalog an operator applies next to the release: a workgroup on shard-1 and the knapsack
# template running the demo algorithm of the same image.
CR=/apis/science.sneaksanddata.com/v1/namespaces/$NS
admin POST "$CR/nexusalgorithmworkgroups" '{"apiVersion":"science.sneaksanddata.com/v1","kind":"NexusAlgorithmWorkgroup","metadata":{"name":"wg"},"spec":{"cluster":"shard-1"}}' >/dev/null
admin POST "$CR/nexusalgorithmtemplates" "{\"apiVersion\":\"science.sneaksanddata.com/v1\",\"kind\":\"NexusAlgorithmTemplate\",\"metadata\":{\"name\":\"knapsack\"},\"spec\":{\"container\":{\"image\":\"${IMAGE_REPO#*/}\",\"registry\":\"${IMAGE_REPO%%/*}\",\"versionTag\":\"$IMAGE_TAG\"},\"computeResources\":{\"cpuLimit\":\"1\",\"memoryLimit\":\"256Mi\"},\"workgroupRef\":{\"name\":\"wg\",\"group\":\"science.sneaksanddata.com\",\"kind\":\"NexusAlgorithmWorkgroup\"},\"command\":\"nexus-demo\",\"args\":[\"knapsack\",\"--sas-uri=%s\",\"--request-id=%s\"],\"runtimeEnvironment\":{\"deadlineSeconds\":180,\"maximumRetries\":0}}}" >/dev/null

# From this host, the Service's NodePort on the node IP works through kube-proxy (no port-forward
# needed); https, trusting the private CA (and nothing else: plain http is refused).
NODE_PORT="$(admin GET "/api/v1/namespaces/$NS/services/$REL-scheduler" | json 'd["spec"]["ports"][0]["nodePort"]')"
URL="https://$NODE_IP:$NODE_PORT"
CA="$WORK/http-ca.crt"
nexus() { timeout 30 "$BIN/nexus" run --server "$URL" --ca-file "$CA" "$@"; }
# The schedulers learn the template through their watch: a submission may be refused until then.
submit() { nexus submit knapsack --params "$ROOT/examples/payloads/knapsack.json"; }
submit_first() { submit >"$WORK/id" 2>"$WORK/submit.err"; }
wait_for 60 "a submission through the Service $URL accepted (the schedulers know the template)" submit_first
id="$(<"$WORK/id")"
log "submitted knapsack run $id through the Service $URL"
JOBS="/apis/batch/v1/namespaces/$RUNS_NS/jobs"
job_exists() { api GET "$JOBS/$1" >/dev/null && [[ "$(status)" == 200 ]]; }
wait_for 60 "Job $RUNS_NS/$id" job_exists "$id"
# check_result ID: COMPLETED, its result through the signed URL has totalValue 90, its Job
# succeeded.
check_result() {
  local rid=$1 out uri
  timeout 200 "$BIN/nexus" run --server "$URL" --ca-file "$CA" wait knapsack "$rid" --timeout 180s >"$WORK/wait.out" 2>&1 \
    || { cat "$WORK/wait.out" >&2; die "run $rid did not complete"; }
  out="$(curl -fsS --max-time 10 --cacert "$CA" "$URL/algorithm/v1/results/knapsack/requests/$rid")" || die "GET results of $rid"
  [[ "$(printf '%s' "$out" | json 'd["status"]')" == COMPLETED ]] || die "run $rid: $out"
  uri="$(printf '%s' "$out" | json 'd["resultUri"]')"
  curl -fsS --max-time 10 "$uri" >"$WORK/result.json" || die "run $rid: its result URL $uri"
  json 'd["totalValue"]' <"$WORK/result.json" | grep -qx 90 || die "run $rid: result $(cat "$WORK/result.json"), expected totalValue 90"
  job_succeeded() { admin GET "$JOBS/$rid" | json '[c["type"] for c in d.get("status", {}).get("conditions", []) if c["status"] == "True"]' | grep -q Complete; }
  wait_for 60 "Job $RUNS_NS/$rid Complete" job_succeeded
}
check_result "$id"
# The Job's pod ran the demo algorithm for real: Succeeded, on this node.
admin GET "/api/v1/namespaces/$RUNS_NS/pods?labelSelector=job-name%3D$id" \
  | json '[(p["status"]["phase"], p["spec"]["nodeName"], p["spec"]["containers"][0]["image"]) for p in d["items"]]' >"$WORK/runpod"
grep -q '"Succeeded"' "$WORK/runpod" || die "the run's pod: $(cat "$WORK/runpod")"
# It was handed the CA (the chart's ConfigMap in the runs namespace) and completed over https.
admin GET "/api/v1/namespaces/$RUNS_NS/pods?labelSelector=job-name%3D$id" \
  | json '[[e.get("value") for e in p["spec"]["containers"][0]["env"] if e["name"] in ("NEXUS_CA_FILE", "NEXUS__RECEIVER_URL")] + [v["configMap"]["name"] for v in p["spec"].get("volumes", []) if v.get("configMap")] for p in d["items"]]' >"$WORK/runpod-ca"
grep -qF '"/etc/nexus/ca/ca.crt"' "$WORK/runpod-ca" && grep -qF '"https://' "$WORK/runpod-ca" && grep -qF '"nexus-ca"' "$WORK/runpod-ca" \
  || die "the run's pod was not handed the CA or an https receiver URL: $(cat "$WORK/runpod-ca")"
# Plain http to the TLS listener gets no answer.
code="$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "http://$NODE_IP:$NODE_PORT/health/readyz" 2>/dev/null)" || true
[[ $code != 200 ]] || die "the scheduler answered plain http on its TLS port"
log "run $id COMPLETED through the pods: Job Complete, pod $(cat "$WORK/runpod"), result totalValue 90"
# Under RBAC only the receiver's account (and the superuser, which nothing here uses for Jobs)
# may create Jobs in the runs namespace; its pod runs on that account's mounted token.
sar() { # serviceaccount namespace verb group resource -> true/false
  admin POST /apis/authorization.k8s.io/v1/subjectaccessreviews "{\"apiVersion\":\"authorization.k8s.io/v1\",\"kind\":\"SubjectAccessReview\",\"spec\":{\"user\":\"system:serviceaccount:$NS:$1\",\"groups\":[\"system:serviceaccounts\",\"system:serviceaccounts:$NS\",\"system:authenticated\"],\"resourceAttributes\":{\"namespace\":\"$2\",\"verb\":\"$3\",\"group\":\"$4\",\"resource\":\"$5\"}}}" \
    | json 'str(d["status"].get("allowed", False)).lower()'
}
for check in "$REL-receiver $RUNS_NS create batch jobs true" "$REL-scheduler $RUNS_NS create batch jobs false" \
  "$REL-supervisor $RUNS_NS create batch jobs false" "$REL-receiver $NS get - secrets false"; do
  read -r sa ns verb group res want <<<"$check"
  [[ $group == - ]] && group=""
  got="$(sar "$sa" "$ns" "$verb" "$group" "$res")"
  [[ $got == "$want" ]] || die "SubjectAccessReview: $sa $verb $res in $ns: allowed=$got, expected $want"
done
log "only the receiver's ServiceAccount may create the Jobs (SubjectAccessReviews)"

LEASE="/apis/coordination.k8s.io/v1/namespaces/$NS/leases/nexus-supervisor"
lease_holder() { admin GET "$LEASE" | json 'd["spec"].get("holderIdentity") or ""'; }
# lease_held_by_pod_of: the holder is "supervisor/<pod name>-<pid>-<random>" of a Running pod.
lease_held_by_pod() {
  local h p
  h="$(lease_holder)"
  for p in $(pods_of supervisor); do [[ $h == "supervisor/$p-"* ]] && return 0; done
  return 1
}
wait_for 60 "the Lease $NS/nexus-supervisor held by a supervisor pod" lease_held_by_pod
holder="$(lease_holder)"
renew0="$(admin GET "$LEASE" | json 'd["spec"].get("renewTime") or ""')"
lease_renewed() {
  admin GET "$LEASE" | json '[d["spec"].get("holderIdentity"), d["spec"].get("renewTime")]' >"$WORK/lease"
  grep -qF "\"$holder\"" "$WORK/lease" && ! grep -qF "\"$renew0\"" "$WORK/lease"
}
wait_for 45 "the supervisor renewing the Lease" lease_renewed
log "Lease $NS/nexus-supervisor held and renewed by $holder"
phase "a run end to end, the Lease"

# --- 5. rolling upgrade keeps serving ---------------------------------------------------------------
# A prober reads the completed run through the Service, every 0.2 s, until told to stop; every
# answer must be 200.
: >"$WORK/prober.log"
(
  while [[ ! -e "$WORK/prober.stop" ]]; do
    code="$(curl -sS --max-time 5 --cacert "$CA" -o /dev/null -w '%{http_code}' "$URL/algorithm/v1/results/knapsack/requests/$id" 2>>"$WORK/prober.log")" || code="error"
    printf '%s %s\n' "$(date +%T.%N | cut -c1-12)" "$code" >>"$WORK/prober.log"
    sleep 0.2
  done
) &
PROBER_PID=$!
rs_of() { # the ReplicaSets of the release's Deployments, sorted
  admin GET "/apis/apps/v1/namespaces/$NS/replicasets?labelSelector=app.kubernetes.io%2Finstance%3D$REL" \
    | json '" ".join(sorted(r["metadata"]["name"] for r in d["items"] if r["spec"]["replicas"] > 0))'
}
rs_before="$(rs_of)"
old_supervisors="$(pods_of supervisor)"
log "helm upgrade (logFormat json -> text: every config changes, every Deployment rolls)"
values text >"$WORK/values-2.yaml"
helm upgrade "$REL" "$CHART" -n "$NS" -f "$WORK/values-2.yaml" --wait --timeout 300s >"$WORK/helm-upgrade.out" 2>&1 &
upgrade_pid=$!
# Runs submitted while the Deployments roll (bounded: at most 8, one every 2 s).
rolling_ids=()
for _ in $(seq 1 8); do
  kill -0 "$upgrade_pid" 2>/dev/null || break
  rid="$(submit)" || die "a submission during the rolling upgrade failed"
  rolling_ids+=("$rid")
  sleep 2
done
wait "$upgrade_pid" || { cat "$WORK/helm-upgrade.out" >&2; die "helm upgrade --wait"; }
for d in "${DEPLOYS[@]}"; do
  wait_for 60 "Deployment $d rolled out after the upgrade" rolled_out "$d"
done
[[ "$(rs_of)" != "$rs_before" ]] || die "helm upgrade rolled nothing (ReplicaSets unchanged: $rs_before)"
sleep 2
touch "$WORK/prober.stop"
wait "$PROBER_PID" || true
PROBER_PID=""
probes=$(wc -l <"$WORK/prober.log")
failed=$(grep -vc ' 200$' "$WORK/prober.log" || true)
((probes > 0)) || die "the prober never ran"
((failed == 0)) || { grep -v ' 200$' "$WORK/prober.log" >&2; die "$failed of $probes reads through the Service failed during the rolling upgrade"; }
log "rolling upgrade: $probes reads through the Service, none failed; ${#rolling_ids[@]} runs submitted meanwhile"
for rid in "${rolling_ids[@]}"; do check_result "$rid"; done
log "the ${#rolling_ids[@]} runs submitted during the rolling upgrade COMPLETED with totalValue 90"
# The new pods are the text-logging ones, and the Lease moved to one of the new supervisors.
lease_moved() {
  local h p
  lease_held_by_pod || return 1
  h="$(lease_holder)"
  for p in $old_supervisors; do [[ $h == "supervisor/$p-"* ]] && return 1; done
  return 0
}
wait_for 90 "the Lease held by a new supervisor pod" lease_moved
log "Lease now held by $(lease_holder)"
phase "rolling upgrade"

# Nothing the components asked of the API server was refused: the chart's RBAC suffices.
for p in $(pods_of scheduler) $(pods_of receiver) $(pods_of supervisor); do
  api GET "/api/v1/namespaces/$NS/pods/$p/log" >"$WORK/log-$p.txt"
  if grep -iE 'forbidden|\b403\b' "$WORK/log-$p.txt" >&2; then
    die "pod $p was refused by the API server (above): the chart's RBAC does not suffice"
  fi
done

# --- 6. uninstall -------------------------------------------------------------------------------------
helm uninstall "$REL" -n "$NS" --wait --timeout 120s >"$WORK/helm-uninstall.out" 2>&1 \
  || { cat "$WORK/helm-uninstall.out" >&2; die "helm uninstall"; }
# The pods go with their ReplicaSets (garbage collector) after their grace period.
no_release_pods() {
  admin GET "/api/v1/namespaces/$NS/pods?labelSelector=app.kubernetes.io%2Finstance%3D$REL" | json 'len(d["items"])' | grep -qx 0
}
wait_for 120 "the release's pods gone" no_release_pods
# Every namespaced kind the chart can create, in both namespaces. What this test made itself may
# stay: the S3 Secret, the catalog resources, the Lease (runtime state, not the release's), the
# runs' Jobs and pods (TTL-after-finished removes them later), the namespaces' own ServiceAccount
# and root CA ConfigMap.
KINDS=(/api/v1/configmaps /api/v1/secrets /api/v1/serviceaccounts /api/v1/services /api/v1/endpoints
  /api/v1/pods /apis/apps/v1/deployments /apis/apps/v1/replicasets /apis/discovery.k8s.io/v1/endpointslices
  /apis/rbac.authorization.k8s.io/v1/roles /apis/rbac.authorization.k8s.io/v1/rolebindings
  /apis/policy/v1/poddisruptionbudgets /apis/autoscaling/v2/horizontalpodautoscalers
  /apis/networking.k8s.io/v1/networkpolicies /apis/networking.k8s.io/v1/ingresses
  /apis/batch/v1/jobs /apis/coordination.k8s.io/v1/leases)
release_left() {
  local -a left=()
  local n k names name
  for n in "$NS" "$RUNS_NS"; do
    for k in "${KINDS[@]}"; do
      names="$(admin GET "${k%/*}/namespaces/$n/${k##*/}" | json '"\n".join(i["metadata"]["name"] for i in d["items"])')"
      while read -r name; do
        [[ -z $name ]] && continue
        case "$n/${k##*/}/$name" in
          "$NS/secrets/nexus-s3" | "$NS/secrets/nexus-http-tls" | "$NS/leases/nexus-supervisor" | */serviceaccounts/default | */configmaps/kube-root-ca.crt) ;;
          "$RUNS_NS/jobs/"* | "$RUNS_NS/pods/"*) ;;
          *) left+=("$n/${k##*/}/$name") ;;
        esac
      done <<<"$names"
    done
  done
  printf '%s\n' "${left[@]}" >"$WORK/left"
  ((${#left[@]} == 0))
}
deadline=$((SECONDS + 60))
until release_left; do
  ((SECONDS < deadline)) || die "helm uninstall left: $(tr '\n' ' ' <"$WORK/left")"
  sleep 1
done
for crd in nexusalgorithmtemplates nexusalgorithmworkgroups; do
  admin GET "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$crd.science.sneaksanddata.com" >/dev/null
done
log "helm uninstall: nothing of the release left in $NS and $RUNS_NS (pods included); the CRDs stay"
phase "uninstall"

log "all good in $(elapsed_since "$START")s (${TIMES[*]/%/;})"
