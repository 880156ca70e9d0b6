#!/usr/bin/env bash
# Integration-tier check of Jobs at scale (issue #20), correctness only: 1,000 runs submitted over
# HTTP to two schedulers go through two receivers (a ServiceAccount's token, API budget 1,000/s)
# into 1,000 Kubernetes Jobs; the Job controller makes their Pods, kube-scheduler binds them to
# 20 kwok nodes, kwok plays them Running then Succeeded, the Jobs complete, and every run ends
# FAILED "Algorithm exited without reporting a result" (kwok runs no algorithm, so none reports
# one: what Nexus must say about a Job that succeeded silently). Nothing about time is asserted;
# figures come from `nexus-bench kube-scale` (bench/RESULTS.md).
#
#   scripts/kwok-scale-check.sh [--kubeconfig PATH]
#
# With --kubeconfig (or NEXUS_TEST_KUBECONFIG), the cluster there is used: it must run the
# controllers and kube-scheduler (scripts/kube-cluster.sh start). Without, a control plane without
# a node is started for the check and stopped after it (NEXUS_CLUSTER_NODE=none
# scripts/kube-cluster.sh). kwok (scripts/kwok.sh) is started and stopped here either way.
#
# environment: NEXUS_KUBE_DIR (as scripts/kube-cluster.sh), NEXUS_BENCH_BIN (default
# target/release/nexus-bench, built if missing), NEXUS_KWOK_CHECK_RUNS [1000],
# NEXUS_KWOK_CHECK_NODES [20].
set -euo pipefail

log() { printf 'kwok-scale-check: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export NEXUS_KUBE_DIR="${NEXUS_KUBE_DIR:-$PWD/.kube-test}"
RUNS="${NEXUS_KWOK_CHECK_RUNS:-1000}"
NODES="${NEXUS_KWOK_CHECK_NODES:-20}"
BENCH="${NEXUS_BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/nexus-bench}"
kubeconfig="${NEXUS_TEST_KUBECONFIG:-}"

while (($#)); do
  case "$1" in
    --kubeconfig) kubeconfig="${2:-}"; shift 2 ;;
    --kubeconfig=*) kubeconfig="${1#*=}"; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "NEXUS_KWOK_CHECK_RUNS='$RUNS' is not a positive number"
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "NEXUS_KWOK_CHECK_NODES='$NODES' is not a positive number"

own_cluster=0
cleanup() {
  scripts/kwok.sh stop || true
  if ((own_cluster)); then scripts/kube-cluster.sh stop || true; fi
}
trap cleanup EXIT

if [[ ! -x "$BENCH" ]]; then
  log "building nexus-bench (release)…"
  cargo build --release --quiet -p nexus-bench
fi
if [[ -z "$kubeconfig" ]]; then
  log "starting a control plane without a node (NEXUS_CLUSTER_NODE=none scripts/kube-cluster.sh)…"
  own_cluster=1
  kubeconfig="$(NEXUS_CLUSTER_NODE=none scripts/kube-cluster.sh start)"
fi
[[ -f "$kubeconfig" ]] || die "kubeconfig $kubeconfig does not exist"
scripts/kwok.sh start --kubeconfig "$kubeconfig" --nodes "$NODES"

t0=$SECONDS
"$BENCH" kube-scale --kubeconfig "$kubeconfig" --budgets 1000 --runs "$RUNS" --nodes "$NODES" \
  --complete --check --baseline-jobs 0 --timeout 600s
log "passed in $((SECONDS - t0))s: $RUNS runs → $RUNS Jobs → Pods on $NODES kwok nodes → Complete → runs ended"
