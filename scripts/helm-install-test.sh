#!/usr/bin/env bash
# The Helm chart helm/nexus against a real API server with RBAC authorization (issue #19):
#
#   1. the test API server (scripts/kube-apiserver.sh) started with --authorization-mode=RBAC
#      (its admin kubeconfig holds the loopback superuser token, group system:masters, which RBAC
#      lets do anything);
#   2. the defaults and every helm/nexus/examples/*.yaml: `helm install --dry-run=server` (the API
#      server validates and admits every rendered object; serviceMonitor.enabled=false: there is no
#      Prometheus Operator CRD here);
#   3. `helm install` of a single-cluster release whose store and payloads are the integration
#      tier's Cassandra and S3. The API server has no kubelet, so the Deployments never get pods:
#      the scheduler, receiver and supervisor run here as local processes, each with the config file
#      the chart rendered into its ConfigMap (read from the API) and a kubeconfig holding nothing
#      but a token of its chart-created ServiceAccount (TokenRequest API), so the chart's RBAC is
#      all they have;
#   4. a knapsack run becomes a Job in the runs namespace (created by the receiver's account), is
#      followed (RUNNING) and cancelled (its Job deleted); the supervisor holds the Lease
#      nexus-supervisor; the receiver's account is refused Secrets and Jobs outside its runs
#      namespace (real requests with its token, and SubjectAccessReviews);
#   5. `helm upgrade` keeps the generated Secret's data; `helm uninstall` leaves nothing of the
#      release behind (every namespaced kind listed through the API) but the CRDs.
#
# Usage: scripts/helm-install-test.sh   (exit 0: all good; a failure names itself, dumps logs)
# Environment (what scripts/integration.sh provides at that point):
#   NEXUS_TEST_CASSANDRA   host:port of a Cassandra node (required)
#   NEXUS_TEST_S3          s3://bucket/prefix?endpoint=...&region=...&access_key=K&secret_key=S
#                          (required; the keys are handed to the components as
#                          NEXUS_S3_ACCESS_KEY_ID / NEXUS_S3_SECRET_ACCESS_KEY)
#   NEXUS_BIN_DIR          where nexus is [target/debug]
#   NEXUS_TOOLS_DIR        helm is $NEXUS_TOOLS_DIR/bin/helm (scripts/helm-check.sh builds it) [target/tools]
#   NEXUS_KUBE_DIR         the API server's dir (scripts/kube-apiserver.sh; shared with the
#                          Kubernetes tests, whose server must be stopped by then)
#   NEXUS_HELM_TEST_KEYSPACE  Cassandra keyspace [nexus_helm]
#   NEXUS_HELM_TEST_KEEP   1 = keep the work dir (configs, kubeconfigs, logs) [0]
# Requires: curl, python3 (JSON), base64.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/nexus"
BIN="${NEXUS_BIN_DIR:-$ROOT/target/debug}"
HELM="${NEXUS_TOOLS_DIR:-$ROOT/target/tools}/bin/helm"
KEYSPACE="${NEXUS_HELM_TEST_KEYSPACE:-nexus_helm}"
REL=nexus          # release name; the chart's fullname is then "nexus"
NS=nexus           # release namespace (catalog and Lease namespace too)
RUNS_NS=nexus-runs # the shard's runs namespace
KUBE_VERSION=1.36.3

log() { printf 'helm-install-test: %s\n' "$*" >&2; }
START=$(date +%s)

WORK="$(mktemp -d)"
pids=()
dump_logs() {
  local f
  for f in "$WORK"/*.log; do
    [[ -s $f ]] || continue
    printf '\n----- tail -n 40 %s -----\n' "$f" >&2
    tail -n 40 "$f" >&2
  done
  if [[ -n "${NEXUS_KUBE_DIR:-}" && -s "$NEXUS_KUBE_DIR/run/stderr.log" ]]; then
    printf '\n----- tail -n 20 kube-apiserver stderr -----\n' >&2
    tail -n 20 "$NEXUS_KUBE_DIR/run/stderr.log" >&2
  fi
}
die() { log "FAILED: $*"; dump_logs; exit 1; }
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
  done
  "$ROOT/scripts/kube-apiserver.sh" stop >/dev/null 2>&1 || true
  if [[ "${NEXUS_HELM_TEST_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

[[ -n "${NEXUS_TEST_CASSANDRA:-}" ]] || die "NEXUS_TEST_CASSANDRA (host:port) is not set"
[[ -n "${NEXUS_TEST_S3:-}" ]] || die "NEXUS_TEST_S3 (s3://...&access_key=...&secret_key=...) is not set"
[[ -x "$BIN/nexus" ]] || die "$BIN/nexus not built (cargo build -p nexus-cli)"
[[ -x "$HELM" ]] || die "$HELM missing (scripts/helm-check.sh builds it)"
for c in curl python3 base64; do command -v "$c" >/dev/null || die "$c is required"; done

# The payload URL without its keys (those go to the components' environment, as extraEnv would).
s3_param() { python3 -c 'import sys, urllib.parse as u; q = u.parse_qs(u.urlsplit(sys.argv[1]).query); print(q.get(sys.argv[2], [""])[0])' "$NEXUS_TEST_S3" "$1"; }
S3_KEY="$(s3_param access_key)"
S3_SECRET="$(s3_param secret_key)"
PAYLOADS="$(python3 -c 'import sys, urllib.parse as u; s = u.urlsplit(sys.argv[1]); q = [(k, v) for k, v in u.parse_qsl(s.query) if k not in ("access_key", "secret_key")]; print(u.urlunsplit(s._replace(query=u.urlencode(q, safe=":/"))))' "$NEXUS_TEST_S3")"
[[ -n $S3_KEY && -n $S3_SECRET ]] || die "NEXUS_TEST_S3 carries no access_key/secret_key"

# Helm keeps its caches and config in the work dir.
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"

# --- 1. the API server, RBAC ----------------------------------------------------------------------
log "starting the test API server with --authorization-mode=RBAC"
ADMIN_KC="$(NEXUS_KUBE_APISERVER_FLAGS="--authorization-mode=RBAC" "$ROOT/scripts/kube-apiserver.sh" start)" \
  || die "the API server did not start"
kc_field() { sed -n "s/^ *$1: *//p" "$ADMIN_KC" | head -n1; }
SERVER="$(kc_field server)"
CA_DATA="$(kc_field certificate-authority-data)"
ADMIN_TOKEN="$(kc_field token)"
[[ -n $SERVER && -n $CA_DATA && -n $ADMIN_TOKEN ]] || die "cannot read $ADMIN_KC"
printf '%s' "$CA_DATA" | base64 -d >"$WORK/ca.crt"
# The authorization mode really is RBAC: it shows in the server's command line.
grep -qF -- "--authorization-mode=RBAC" "/proc/$(<"$NEXUS_KUBE_DIR/run/kube-apiserver.pid")/cmdline" \
  || die "the API server was not started with --authorization-mode=RBAC"

# api TOKEN METHOD PATH [JSON-BODY]: prints the response body; the HTTP status goes to $WORK/status.
api() {
  local token=$1 method=$2 path=$3 body=${4:-}
  local -a data=()
  [[ -n $body ]] && data=(--data-binary "$body")
  curl -sS --max-time 20 --cacert "$WORK/ca.crt" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' -H 'Accept: application/json' -X "$method" \
    -o "$WORK/body" -w '%{http_code}' "${data[@]}" "$SERVER$path" >"$WORK/status" \
    || die "$method $path: curl failed"
  cat "$WORK/body"
}
status() { cat "$WORK/status"; }
# admin METHOD PATH [BODY]: as the superuser; fails unless 2xx.
admin() {
  local out
  out="$(api "$ADMIN_TOKEN" "$@")"
  [[ "$(status)" == 2* ]] || die "$1 $2 as admin: HTTP $(status): $out"
  printf '%s' "$out"
}
# json EXPR: evaluates a Python expression over the JSON on stdin (bound to `d`).
json() { python3 -c "import json, sys; d = json.load(sys.stdin); r = ($1); print(r if isinstance(r, str) else json.dumps(r))"; }
# wait_for SECONDS WHAT COMMAND...: retries COMMAND every 0.5 s until it succeeds.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null; do
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for: $what"
    sleep 0.5
  done
}

namespace() {
  admin POST /api/v1/namespaces "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"$1\"}}" >/dev/null
}
for n in "$NS" "$RUNS_NS" nexus-runs-gpu; do namespace "$n"; done
helm() { "$HELM" --kubeconfig "$ADMIN_KC" "$@"; }

# --- 2. server-side dry-run of the defaults and every example -------------------------------------
REQUIRED=(--set 'store=cassandra://cassandra:9042/nexus' --set 'payloads=s3://nexus/runs?region=us-east-1')
helm install dry-defaults "$CHART" -n "$NS" --dry-run=server --set serviceMonitor.enabled=false \
  "${REQUIRED[@]}" >"$WORK/dry-defaults.out" 2>&1 \
  || { cat "$WORK/dry-defaults.out" >&2; die "helm install --dry-run=server (defaults)"; }
log "dry-run=server: defaults accepted"
for f in "$CHART"/examples/*.yaml; do
  name="dry-$(basename "$f" .yaml)"
  helm install "$name" "$CHART" -n "$NS" --dry-run=server -f "$f" --set serviceMonitor.enabled=false \
    >"$WORK/$name.out" 2>&1 || { cat "$WORK/$name.out" >&2; die "helm install --dry-run=server -f ${f#"$ROOT"/}"; }
  log "dry-run=server: ${f#"$ROOT"/} accepted"
done

# --- 3. install, then the components as local processes -------------------------------------------
cat >"$WORK/values.yaml" <<EOF
# One cluster, one shard whose runs go to $RUNS_NS; one replica each (no pods run here anyway).
store: cassandra://$NEXUS_TEST_CASSANDRA/$KEYSPACE
payloads: "$PAYLOADS"
logFormat: text
shards:
  - name: shard-1
    replicas: 1
    runsNamespace: $RUNS_NS
scheduler:
  replicas: 1
  autoscaling: {enabled: false}
supervisor:
  replicas: 1
serviceMonitor:
  enabled: false
EOF
helm install "$REL" "$CHART" -n "$NS" -f "$WORK/values.yaml" --timeout 60s >"$WORK/helm-install.out" 2>&1 \
  || { cat "$WORK/helm-install.out" >&2; die "helm install"; }
log "helm install: release $REL in $NS"

# The catalog (what an operator applies next to the release): a workgroup on shard-1 and the
# knapsack template, in the catalog namespace. The CRDs come from the chart's crds/.
crd_established() {
  admin GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/nexusalgorithmtemplates.science.sneaksanddata.com \
    | json '[c["status"] for c in d.get("status", {}).get("conditions", []) if c["type"] == "Established"] == ["True"]' \
    | grep -qx true
}
wait_for 30 "the chart's CRDs established" crd_established
CR=/apis/science.sneaksanddata.com/v1/namespaces/$NS
admin POST "$CR/nexusalgorithmworkgroups" '{"apiVersion":"science.sneaksanddata.com/v1","kind":"NexusAlgorithmWorkgroup","metadata":{"name":"wg"},"spec":{"cluster":"shard-1"}}' >/dev/null
admin POST "$CR/nexusalgorithmtemplates" '{"apiVersion":"science.sneaksanddata.com/v1","kind":"NexusAlgorithmTemplate","metadata":{"name":"knapsack"},"spec":{"container":{"image":"nexus-demo","registry":"local","versionTag":"latest"},"computeResources":{"cpuLimit":"1","memoryLimit":"256Mi"},"workgroupRef":{"name":"wg","group":"science.sneaksanddata.com","kind":"NexusAlgorithmWorkgroup"},"command":"nexus-demo","args":["knapsack","--sas-uri=%s","--request-id=%s"],"runtimeEnvironment":{"deadlineSeconds":120,"maximumRetries":0}}}' >/dev/null

# The Secret the chart generated: its data become local files (in a pod it is mounted at
# /etc/nexus/secrets).
mkdir -p "$WORK/secrets" "$WORK/templates" "$WORK/receiver-work"
chmod 700 "$WORK/secrets"
admin GET "/api/v1/namespaces/$NS/secrets/$REL-secrets" >"$WORK/secret.json"
for k in signing.key grpc.secret; do
  json "d['data']['$k']" <"$WORK/secret.json" | base64 -d >"$WORK/secrets/$k"
  [[ -s "$WORK/secrets/$k" ]] || die "Secret $REL-secrets has no $k"
done

# Free loopback ports for the processes.
read -r P_SCHED P_RHTTP P_RGRPC P_SUP < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')

# The config files the chart rendered, from the ConfigMap, adjusted only where a process outside a
# pod must differ. Exactly these keys change (anything else is as rendered):
#   listen, grpc_listen        0.0.0.0:<chart port> -> 127.0.0.1:<free port> (several processes
#                              share this host's loopback; the chart's ports may be taken)
#   public_url                 the Service's cluster DNS name -> http://127.0.0.1:<its listen port>
#                              (no cluster DNS here)
#   receiver.scheduler_url, scheduler_url
#                              the scheduler Service's DNS name -> http://127.0.0.1:<scheduler port>
#   shards.shard-1.endpoints   the receivers' headless Service DNS name -> http://127.0.0.1:<grpc port>
#   signing_key_file, grpc.secret_file
#                              /etc/nexus/secrets/* (the Secret's mount) -> the files written above
#                              from the Secret's data
#   templates_dir              /etc/nexus/templates -> an empty local dir (unused with catalog
#                              kubernetes; rewritten so that no path of the pod's world is left)
#   work_dir                   /var/lib/nexus/work (an emptyDir) -> a local dir
# The Kubernetes credentials are not a config key: in a pod they are the mounted ServiceAccount
# token (in-cluster config); here KUBECONFIG points at a kubeconfig holding a token of the same
# ServiceAccount, obtained with the TokenRequest API.
admin GET "/api/v1/namespaces/$NS/configmaps/$REL-config" >"$WORK/configmap.json"
sched_dns="http://$REL-scheduler.$NS.svc.cluster.local:8080"
recv_http_dns="http://$REL-receiver-shard-1.$NS.svc.cluster.local:8091"
recv_grpc_dns="http://$REL-receiver-shard-1.$NS.svc.cluster.local:9091"
render_config() { # configmap-key out-file
  json "d['data']['$1']" <"$WORK/configmap.json" >"$WORK/$2.rendered.yaml"
  [[ -s "$WORK/$2.rendered.yaml" ]] || die "ConfigMap $REL-config has no $1"
  local listen_port
  case $2 in
    scheduler) listen_port=$P_SCHED ;;
    receiver) listen_port=$P_RHTTP ;;
    supervisor) listen_port=$P_SUP ;;
  esac
  sed -E \
    -e "s#^listen: 0\.0\.0\.0:[0-9]+\$#listen: 127.0.0.1:$listen_port#" \
    -e "s#^grpc_listen: 0\.0\.0\.0:[0-9]+\$#grpc_listen: 127.0.0.1:$P_RGRPC#" \
    -e "s#^public_url: $sched_dns\$#public_url: http://127.0.0.1:$P_SCHED#" \
    -e "s#^public_url: $recv_http_dns\$#public_url: http://127.0.0.1:$P_RHTTP#" \
    -e "s#^(  )?scheduler_url: $sched_dns\$#\1scheduler_url: http://127.0.0.1:$P_SCHED#" \
    -e "s#^(    - )$recv_grpc_dns\$#\1http://127.0.0.1:$P_RGRPC#" \
    -e "s#^signing_key_file: /etc/nexus/secrets/signing.key\$#signing_key_file: $WORK/secrets/signing.key#" \
    -e "s#^(  secret_file: )/etc/nexus/secrets/grpc.secret\$#\1$WORK/secrets/grpc.secret#" \
    -e "s#^templates_dir: /etc/nexus/templates\$#templates_dir: $WORK/templates#" \
    -e "s#^work_dir: /var/lib/nexus/work\$#work_dir: $WORK/receiver-work#" \
    "$WORK/$2.rendered.yaml" >"$WORK/$2.yaml"
  # Nothing of the pod's world may be left.
  if grep -nE 'svc\.cluster\.local|/etc/nexus|/var/lib/nexus|0\.0\.0\.0' "$WORK/$2.yaml" >&2; then
    die "$2: the rendered config still names the pod's world (above); the chart's config changed?"
  fi
  log "$2 config: $(diff "$WORK/$2.rendered.yaml" "$WORK/$2.yaml" | grep -c '^>') keys changed"
}

# A kubeconfig with only a TokenRequest token of the component's ServiceAccount.
sa_kubeconfig() { # component
  local sa="$REL-$1" token
  token="$(admin POST "/api/v1/namespaces/$NS/serviceaccounts/$sa/token" \
    '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}' \
    | json "d['status']['token']")" || die "TokenRequest for $sa"
  [[ -n $token ]] || die "TokenRequest for $sa: no token"
  printf '%s' "$token" >"$WORK/$1.token"
  cat >"$WORK/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "$SERVER", certificate-authority-data: "$CA_DATA"}
users:
- name: $sa
  user: {token: "$token"}
contexts:
- name: $sa
  context: {cluster: test, user: $sa, namespace: $NS}
current-context: $sa
EOF
  chmod 600 "$WORK/$1.kubeconfig"
}

# The schema first (the components would apply it too; once, not three times at once).
NEXUS_S3_ACCESS_KEY_ID="$S3_KEY" NEXUS_S3_SECRET_ACCESS_KEY="$S3_SECRET" \
  timeout 120 "$BIN/nexus" store migrate --url "cassandra://$NEXUS_TEST_CASSANDRA/$KEYSPACE" \
  >"$WORK/migrate.log" 2>&1 || die "nexus store migrate"

start_component() { # component configmap-key ready-port
  render_config "$2" "$1"
  sa_kubeconfig "$1"
  # env -i: the process sees no credential but its kubeconfig (no in-cluster variables, no
  # ~/.kube/config: HOME is the work dir).
  env -i PATH="$PATH" HOME="$WORK" KUBECONFIG="$WORK/$1.kubeconfig" NEXUS_LOG=info \
    NEXUS_S3_ACCESS_KEY_ID="$S3_KEY" NEXUS_S3_SECRET_ACCESS_KEY="$S3_SECRET" \
    "$BIN/nexus" "$1" --config "$WORK/$1.yaml" >"$WORK/$1.log" 2>&1 &
  pids+=($!)
  local pid=$!
  ready() { kill -0 "$pid" 2>/dev/null || die "$1 exited (log above)"; curl -fs --max-time 2 "http://127.0.0.1:$3/health/readyz"; }
  wait_for 90 "$1 ready on 127.0.0.1:$3" ready "$1" "$2" "$3"
  log "$1 ready (pid $pid, ServiceAccount $REL-$1)"
}
start_component receiver receiver-shard-1.yaml "$P_RHTTP"
start_component scheduler scheduler.yaml "$P_SCHED"
start_component supervisor supervisor.yaml "$P_SUP"

# --- 4. a run: Job, followed, cancelled; the Lease; the receiver's limits -------------------------
SERVER_URL="http://127.0.0.1:$P_SCHED"
id="$(timeout 30 "$BIN/nexus" run --server "$SERVER_URL" submit knapsack --params "$ROOT/examples/payloads/knapsack.json")" \
  || die "nexus run submit knapsack"
log "submitted knapsack run $id"
JOBS="/apis/batch/v1/namespaces/$RUNS_NS/jobs"
job_exists() { api "$ADMIN_TOKEN" GET "$JOBS/$id" >/dev/null; [[ "$(status)" == 200 ]]; }
wait_for 60 "Job $RUNS_NS/$id" job_exists
managers="$(admin GET "$JOBS/$id" | json '",".join(sorted({f.get("manager", "") for f in d["metadata"].get("managedFields", [])}))')"
log "Job $RUNS_NS/$id created (field managers: $managers; only the receiver holds credentials that may create Jobs there)"
run_status() { timeout 10 "$BIN/nexus" run --server "$SERVER_URL" get knapsack "$id" 2>/dev/null | grep -q "$1"; }
wait_for 30 "run $id RUNNING (the receiver follows its Job)" run_status RUNNING
timeout 30 "$BIN/nexus" run --server "$SERVER_URL" cancel --reason "helm install test" knapsack "$id" \
  >"$WORK/cancel.out" 2>&1 || { cat "$WORK/cancel.out" >&2; die "nexus run cancel"; }
wait_for 30 "run $id CANCELLED" run_status CANCELLED
# Deleted, or (Foreground policy, no garbage collector on this server) terminating.
job_deleted() {
  local out
  out="$(api "$ADMIN_TOKEN" GET "$JOBS/$id")"
  [[ "$(status)" == 404 ]] || printf '%s' "$out" | json '"deletionTimestamp" in d["metadata"]' | grep -qx true
}
wait_for 30 "Job $RUNS_NS/$id deleted after the cancel" job_deleted
log "run $id cancelled; its Job deleted"

LEASE="/apis/coordination.k8s.io/v1/namespaces/$NS/leases/nexus-supervisor"
lease_held() { admin GET "$LEASE" | json 'd["spec"].get("holderIdentity") or ""' | grep -q .; }
wait_for 60 "the supervisor's Lease $NS/nexus-supervisor held" lease_held
holder="$(admin GET "$LEASE" | json 'd["spec"]["holderIdentity"]')"
[[ $holder == supervisor/* ]] || die "Lease $NS/nexus-supervisor held by '$holder', not a supervisor"
# Held, not just created: the supervisor renews it (an update, which the chart's Role allows on
# that name only), so its renewTime moves on under the same holder.
renew0="$(admin GET "$LEASE" | json 'd["spec"].get("renewTime") or ""')"
lease_renewed() {
  admin GET "$LEASE" | json '[d["spec"].get("holderIdentity"), d["spec"].get("renewTime")]' >"$WORK/lease"
  grep -qF "\"$holder\"" "$WORK/lease" && ! grep -qF "\"$renew0\"" "$WORK/lease"
}
wait_for 45 "the supervisor renewing its Lease $NS/nexus-supervisor" lease_renewed
log "Lease $NS/nexus-supervisor held and renewed by $holder"

# The receiver's account: its own runs namespace yes, Secrets and Jobs elsewhere no. First real
# requests with its token, then SubjectAccessReviews (asked as admin).
RTOKEN="$(<"$WORK/receiver.token")"
expect_forbidden() { # METHOD PATH [BODY]
  api "$RTOKEN" "$@" >/dev/null
  [[ "$(status)" == 403 ]] || die "receiver's token: $1 $2 answered HTTP $(status), expected 403"
}
JOB_BODY='{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"intruder"},"spec":{"template":{"spec":{"restartPolicy":"Never","containers":[{"name":"c","image":"busybox"}]}}}}'
expect_forbidden GET "/api/v1/namespaces/$NS/secrets"
expect_forbidden GET "/api/v1/namespaces/$NS/secrets/$REL-secrets"
expect_forbidden GET "/api/v1/namespaces/$RUNS_NS/secrets"
expect_forbidden POST "/apis/batch/v1/namespaces/default/jobs?dryRun=All" "$JOB_BODY"
expect_forbidden POST "/apis/batch/v1/namespaces/$NS/jobs?dryRun=All" "$JOB_BODY"
api "$RTOKEN" GET "$JOBS" >/dev/null
[[ "$(status)" == 200 ]] || die "receiver's token: list Jobs in $RUNS_NS answered HTTP $(status)"
sar() { # namespace verb group resource -> allowed true/false
  admin POST /apis/authorization.k8s.io/v1/subjectaccessreviews "{\"apiVersion\":\"authorization.k8s.io/v1\",\"kind\":\"SubjectAccessReview\",\"spec\":{\"user\":\"system:serviceaccount:$NS:$REL-receiver\",\"groups\":[\"system:serviceaccounts\",\"system:serviceaccounts:$NS\",\"system:authenticated\"],\"resourceAttributes\":{\"namespace\":\"$1\",\"verb\":\"$2\",\"group\":\"$3\",\"resource\":\"$4\"}}}" \
    | json 'str(d["status"].get("allowed", False)).lower()'
}
for check in "default get - secrets false" "$NS get - secrets false" "$RUNS_NS get - secrets false" \
  "default create batch jobs false" "$NS create batch jobs false" "nexus-runs-gpu create batch jobs false" \
  "$RUNS_NS create batch jobs true" "$RUNS_NS delete batch jobs true"; do
  read -r ns verb group res want <<<"$check"
  [[ $group == - ]] && group=""
  got="$(sar "$ns" "$verb" "$group" "$res")"
  [[ $got == "$want" ]] || die "SubjectAccessReview: receiver $verb $res in $ns: allowed=$got, expected $want"
done
log "the receiver's account is refused Secrets and Jobs outside $RUNS_NS (requests and SubjectAccessReviews)"

# Nothing the components asked of the API server was refused: the chart's RBAC suffices.
if grep -iE 'forbidden|\b403\b' "$WORK"/{scheduler,receiver,supervisor}.log >&2; then
  die "a component was refused by the API server (above): the chart's RBAC does not suffice"
fi

# --- 5. upgrade keeps the Secret; uninstall leaves only the CRDs ----------------------------------
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do
  for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && die "pid $p did not stop within 20s of SIGTERM"
done
pids=()
before="$(json 'd["data"]' <"$WORK/secret.json")"
helm upgrade "$REL" "$CHART" -n "$NS" -f "$WORK/values.yaml" --timeout 60s >"$WORK/helm-upgrade.out" 2>&1 \
  || { cat "$WORK/helm-upgrade.out" >&2; die "helm upgrade"; }
after="$(admin GET "/api/v1/namespaces/$NS/secrets/$REL-secrets" | json 'd["data"]')"
[[ "$before" == "$after" ]] || die "helm upgrade changed the Secret's data"
log "helm upgrade: revision 2, the Secret's keys kept"

helm uninstall "$REL" -n "$NS" --wait --timeout 60s >"$WORK/helm-uninstall.out" 2>&1 \
  || { cat "$WORK/helm-uninstall.out" >&2; die "helm uninstall"; }
# Every namespaced kind the chart can create (and what Helm keeps), listed in both namespaces.
# What this test made itself is allowed to stay: the catalog resources, the supervisor's Lease
# (runtime state, not the release's) and the cancelled run's Job if still terminating.
KINDS=(/api/v1/configmaps /api/v1/secrets /api/v1/serviceaccounts /api/v1/services /api/v1/endpoints
  /api/v1/pods /apis/apps/v1/deployments /apis/apps/v1/replicasets
  /apis/rbac.authorization.k8s.io/v1/roles /apis/rbac.authorization.k8s.io/v1/rolebindings
  /apis/policy/v1/poddisruptionbudgets /apis/autoscaling/v2/horizontalpodautoscalers
  /apis/networking.k8s.io/v1/networkpolicies /apis/networking.k8s.io/v1/ingresses
  /apis/batch/v1/jobs /apis/coordination.k8s.io/v1/leases)
left=()
for n in "$NS" "$RUNS_NS"; do
  for k in "${KINDS[@]}"; do
    path="${k%/*}/namespaces/$n/${k##*/}"
    names="$(admin GET "$path" | json '"\n".join(i["metadata"]["name"] for i in d["items"])')"
    while read -r name; do
      [[ -z $name ]] && continue
      case "$n/${k##*/}/$name" in
        "$NS/leases/nexus-supervisor" | "$RUNS_NS/jobs/$id") ;;
        *) left+=("$n/${k##*/}/$name") ;;
      esac
    done <<<"$names"
  done
done
((${#left[@]} == 0)) || die "helm uninstall left: ${left[*]}"
for crd in nexusalgorithmtemplates nexusalgorithmworkgroups; do
  admin GET "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$crd.science.sneaksanddata.com" >/dev/null
done
log "helm uninstall: nothing of the release left in $NS and $RUNS_NS; the CRDs stay"
log "all good in $(($(date +%s) - START))s"
