#!/usr/bin/env bash
# Static validation of the Helm chart helm/nexus (issue #19), offline once the tools are built:
#
#   1. tools: helm v3.22.0 and kube-score v1.20.0, built from the Go module proxy into
#      target/tools/bin (reused when present at the right version; cold ~3 min, warm run ~1 s);
#   2. crds/ of the chart is byte-identical to deploy/crds/nexus-crds.yaml (`nexus crd` output);
#   3. `helm lint --strict`: the defaults (plus the two required URLs) and every examples/*.yaml;
#   4. `helm template` of every example, with checks of what the chart must get right: no loopback
#      URL anywhere in the rendered config, receivers' public_url and the schedulers' shard
#      endpoints are the Services' cluster DNS names, required values refused when missing;
#   5. `kube-score score` on every rendered example: no CRITICAL finding (the few checks that do
#      not apply are skipped below, each with its reason).
#
# Usage: scripts/helm-check.sh          (exit 0: all good; any failure names itself and exits 1)
#        scripts/helm-check.sh --tools-only   step 1 only (scripts/prebuild.sh)
# Environment: NEXUS_HELM_CHECK_OUT  where rendered manifests go (default target/helm-check)
#              NEXUS_TOOLS_DIR       tools dir (default target/tools)
# Requires: go (for the first run), bash, cmp, grep. Server-side dry-run, install, upgrade and
# uninstall against a real API server with RBAC: scripts/helm-install-test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/helm/nexus"
TOOLS="${NEXUS_TOOLS_DIR:-$ROOT/target/tools}"
OUT="${NEXUS_HELM_CHECK_OUT:-$ROOT/target/helm-check}"
HELM_VERSION=v3.22.0
KUBE_SCORE_VERSION=v1.20.0
# The Kubernetes version rendered for: the test API server's (tools/kube-apiserver/go.mod). Helm
# built by `go install` has no default of its own worth using (it says v1.20).
KUBE_VERSION="${NEXUS_HELM_KUBE_VERSION:-1.36.3}"
INSTALL_TIMEOUT=1200   # seconds per tool build (helm: ~2.5 min on 2 cores)

log() { printf 'helm-check: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
START=$(date +%s)

# --- 1. tools -------------------------------------------------------------------------------------
mkdir -p "$TOOLS/bin" "$OUT"
export GOBIN="$TOOLS/bin"
HELM="$GOBIN/helm"
KUBE_SCORE="$GOBIN/kube-score"

# Helm keeps its caches and config here, not in the user's home.
export HELM_CACHE_HOME="$TOOLS/helm-home/cache" HELM_CONFIG_HOME="$TOOLS/helm-home/config" \
  HELM_DATA_HOME="$TOOLS/helm-home/data"

go_install() { # module@version
  command -v go >/dev/null || die "go is needed to build $1 (or put the binary in $GOBIN)"
  log "building $1 from the Go module proxy into $GOBIN"
  # Without debug information (nothing reads it; emitting it is much of a cold build's time).
  GOFLAGS=-mod=mod timeout "$INSTALL_TIMEOUT" go install -gcflags=all=-dwarf=false -ldflags="-s -w" "$1" \
    || die "go install $1"
}

# Binaries built by `go install` carry no release version of their own (helm says "v3.22",
# kube-score "dev"): the module version is read from the binary's build information.
built_from() { # binary module version
  [[ -x $1 ]] && go version -m "$1" 2>/dev/null | grep -qE "^[[:space:]]+mod[[:space:]]+$2[[:space:]]+$3([[:space:]]|$)"
}
built_from "$HELM" helm.sh/helm/v3 "$HELM_VERSION" || go_install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
built_from "$HELM" helm.sh/helm/v3 "$HELM_VERSION" || die "$HELM is not helm $HELM_VERSION"
built_from "$KUBE_SCORE" github.com/zegl/kube-score "$KUBE_SCORE_VERSION" \
  || go_install "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
built_from "$KUBE_SCORE" github.com/zegl/kube-score "$KUBE_SCORE_VERSION" || die "$KUBE_SCORE is not kube-score $KUBE_SCORE_VERSION"
log "tools ready after $(( $(date +%s) - START ))s: helm $HELM_VERSION, kube-score $KUBE_SCORE_VERSION"
[[ "${1:-}" == --tools-only ]] && exit 0

# --- 2. CRDs --------------------------------------------------------------------------------------
cmp -s "$ROOT/deploy/crds/nexus-crds.yaml" "$CHART/crds/nexus-crds.yaml" \
  || die "helm/nexus/crds/nexus-crds.yaml differs from deploy/crds/nexus-crds.yaml (nexus crd output): cp deploy/crds/nexus-crds.yaml helm/nexus/crds/"
log "crds/ matches deploy/crds/nexus-crds.yaml"

# --- 3. lint --------------------------------------------------------------------------------------
# store and payloads have no default (a deployment must name its own); everything else does.
REQUIRED=(--set 'store=cassandra://cassandra:9042/nexus' --set 'payloads=s3://nexus/runs?region=us-east-1')
EXAMPLES=("$CHART"/examples/*.yaml)
[[ ${#EXAMPLES[@]} -ge 3 ]] || die "expected the three examples under helm/nexus/examples"

"$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" "${REQUIRED[@]}" >"$OUT/lint-defaults.txt" 2>&1 \
  || { cat "$OUT/lint-defaults.txt" >&2; die "helm lint --strict (defaults)"; }
for f in "${EXAMPLES[@]}"; do
  "$HELM" lint --strict --kube-version "$KUBE_VERSION" "$CHART" -f "$f" >"$OUT/lint-$(basename "$f" .yaml).txt" 2>&1 \
    || { cat "$OUT/lint-$(basename "$f" .yaml).txt" >&2; die "helm lint --strict -f ${f#"$ROOT"/}"; }
done
log "helm lint --strict: defaults and ${#EXAMPLES[@]} examples clean"

# --- 4. render and check --------------------------------------------------------------------------
render() { # name, helm template args...
  local name=$1; shift
  "$HELM" template nexus "$CHART" --kube-version "$KUBE_VERSION" --namespace nexus "$@" >"$OUT/$name.yaml" 2>"$OUT/$name.err" \
    || { cat "$OUT/$name.err" >&2; die "helm template ($name)"; }
}
render defaults "${REQUIRED[@]}"
for f in "${EXAMPLES[@]}"; do render "$(basename "$f" .yaml)" -f "$f"; done

# Must be refused: no store; schedulers off without schedulerUrl; an unknown key (schema).
refused() { # what, expected message, helm args...
  local what=$1 msg=$2; shift 2
  if "$HELM" template nexus "$CHART" --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>"$OUT/refused.err"; then
    die "helm template accepted $what"
  fi
  grep -q -- "$msg" "$OUT/refused.err" || { cat "$OUT/refused.err" >&2; die "$what: refused without naming '$msg'"; }
}
refused "values without store" "store: the Cassandra run store URL" --set 'payloads=s3://b/p'
refused "scheduler.enabled=false without schedulerUrl" "schedulerUrl: required" "${REQUIRED[@]}" --set scheduler.enabled=false
refused "an unknown key" "additional properties 'sheduler' not allowed" "${REQUIRED[@]}" --set sheduler.port=1
refused "grpc.auth mtls without TLS" "grpc.auth: mtls needs grpc.tls.enabled" "${REQUIRED[@]}" --set grpc.auth=mtls
refused "tls.enabled without a Secret" "tls.secretName: required with tls.enabled" "${REQUIRED[@]}" --set tls.enabled=true
refused "an algorithm CA without TLS" "tls.algorithmCa: only with tls.enabled" "${REQUIRED[@]}" --set tls.algorithmCa.configMap=ca
refused "two algorithm CAs" "tls.algorithmCa: set pem or configMap" "${REQUIRED[@]}" --set tls.enabled=true \
  --set tls.secretName=s --set tls.algorithmCa.configMap=ca --set tls.algorithmCa.pem=x

# TLS on the HTTP listeners: every URL https, probes over HTTPS, the key mounted, Jobs given the CA.
render http-tls "${REQUIRED[@]}" --set tls.enabled=true --set tls.secretName=nexus-http-tls \
  --set-string 'tls.algorithmCa.pem=-----BEGIN CERTIFICATE-----' --set 'shards[0].name=shard-1' \
  --set 'shards[0].runsNamespace=runs'
for want in 'public_url: https://nexus-scheduler.nexus.svc.cluster.local:8080' \
  'public_url: https://nexus-receiver-shard-1.nexus.svc.cluster.local:8091' \
  'scheduler_url: https://nexus-scheduler.nexus.svc.cluster.local:8080' \
  'cert_file: /etc/nexus/http-tls/tls.crt' 'ca_config_map: nexus-ca' 'secretName: nexus-http-tls'; do
  grep -qF -- "$want" "$OUT/http-tls.yaml" || die "tls.enabled: '$want' is not rendered"
done
[[ $(grep -c 'scheme: HTTPS' "$OUT/http-tls.yaml") -eq 6 ]] || die "tls.enabled: the 6 probes do not all use HTTPS"
[[ $(grep -c 'scheme: HTTP$' "$OUT/defaults.yaml") -eq 6 ]] || die "defaults: the 6 probes do not all use HTTP"
grep -B3 -A6 '^  name: nexus-ca$' "$OUT/http-tls.yaml" | grep -q 'namespace: runs' \
  || die "tls.algorithmCa.pem: the CA ConfigMap is not in the runs namespace"

for f in "$OUT"/defaults.yaml "$OUT"/{single,controller,shard}-cluster.yaml; do
  name=$(basename "$f" .yaml)
  # Jobs and peers get Service DNS names, never loopback (the components' default public_url).
  if grep -nE '127\.0\.0\.1|localhost|\[::1\]' "$f"; then die "$name: loopback address in the rendered manifests"; fi
done
# Receivers report their Service DNS name; schedulers reach shard-1's receivers through it.
grep -q 'public_url: http://nexus-receiver-shard-1.nexus.svc.cluster.local:8091' "$OUT/defaults.yaml" \
  || die "defaults: receiver public_url is not the shard Service's cluster DNS name"
grep -q -- '- http://nexus-receiver-shard-1.nexus.svc.cluster.local:9091' "$OUT/defaults.yaml" \
  || die "defaults: the scheduler's shard endpoint is not the receivers' Service DNS name"
grep -q 'scheduler_url: http://nexus-scheduler.nexus.svc.cluster.local:8080' "$OUT/defaults.yaml" \
  || die "defaults: scheduler_url is not the scheduler Service's cluster DNS name"
# Controller cluster: no receivers, no supervisor; shard cluster: no scheduler.
deployments() { grep -A2 '^kind: Deployment' "$1" | sed -n 's/^  name: //p' | sort | tr '\n' ' '; }
[[ $(deployments "$OUT/controller-cluster.yaml") == "nexus-scheduler " ]] \
  || die "controller-cluster: Deployments are '$(deployments "$OUT/controller-cluster.yaml")', expected the scheduler only"
[[ $(deployments "$OUT/shard-cluster.yaml") == "nexus-receiver-shard-eu-1 nexus-supervisor " ]] \
  || die "shard-cluster: Deployments are '$(deployments "$OUT/shard-cluster.yaml")', expected shard-eu-1's receivers and the supervisor"
# Duplicate keys are valid YAML to helm lint but not to the API server's strict decoding.
for f in "$OUT"/*.yaml; do
  awk -v f="$(basename "$f")" '
    /^---/ { delete seen; next }
    { match($0, /^ */); ind = RLENGTH; line = substr($0, ind + 1)
      if (line ~ /^- /) { for (k in seen) { split(k, a, SUBSEP); if (a[1] >= ind) delete seen[k] } ; next }
      for (k in seen) { split(k, a, SUBSEP); if (a[1] > ind) delete seen[k] }
      if (line ~ /^[A-Za-z0-9_.\/-]+:( |$)/) { key = line; sub(/:.*/, "", key)
        if ((ind SUBSEP key) in seen) { print f ": duplicate key " key " (line " NR ")"; bad = 1 }
        seen[ind, key] = 1 } }
    END { exit bad }' "$f" || die "duplicate mapping keys in $(basename "$f")"
done
log "helm template: ${#EXAMPLES[@]} examples and the defaults render; URLs are cluster DNS names; bad values refused"

# --- 5. kube-score --------------------------------------------------------------------------------
# Checks skipped, each for a reason (docs/DECISIONS.md, "Helm chart"):
#  * container-image-pull-policy: wants Always; the image is often built locally and loaded into
#    the nodes (kind, podman), where Always cannot work. image.pullPolicy lets users choose, and
#    the tag is pinned to the chart's appVersion (container-image-tag stays enabled).
#  * pod-networkpolicy / networkpolicy-targets-pod: the defaults render no NetworkPolicy (its peers
#    depend on the cluster); the three examples enable it and are scored with the check on.
KS_IGNORE_COMMON=(--ignore-test container-image-pull-policy)
rc=0
for f in "$OUT"/defaults.yaml "${EXAMPLES[@]/#$CHART\/examples\//$OUT/}"; do
  name=$(basename "$f" .yaml)
  extra=()
  [[ $name == defaults ]] && extra=(--ignore-test pod-networkpolicy)
  # CRDs are not scored (kube-score has no checks for them); helm template --skip-crds is the default.
  "$KUBE_SCORE" score "${KS_IGNORE_COMMON[@]}" "${extra[@]}" --output-format ci "$f" >"$OUT/kube-score-$name.txt" 2>&1 || true
  if grep -E '^\[CRITICAL\]' "$OUT/kube-score-$name.txt" >&2; then
    log "kube-score: CRITICAL findings in $name (full report: ${OUT#"$ROOT"/}/kube-score-$name.txt)"
    rc=1
  fi
done
[[ $rc -eq 0 ]] || die "kube-score found CRITICAL problems"
warnings=$(cat "$OUT"/kube-score-*.txt | grep -c '^\[WARNING\]' || true)
log "kube-score: no CRITICAL finding ($warnings warnings, reports in ${OUT#"$ROOT"/}/kube-score-*.txt)"

log "OK in $(( $(date +%s) - START ))s"
