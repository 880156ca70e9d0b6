#!/usr/bin/env bash
# Builds what the integration tier needs later, in the background, one build after another, on
# the CPU the tests leave idle (nice 19, idle I/O class): most integration steps wait on services
# (Cassandra, pods, a browser) far more than they compute. scripts/integration.sh starts it at
# its beginning in a session of its own (so that its cleanup can stop the whole group).
#
#   scripts/prebuild.sh DIR
#
# In the order the steps need them: Dex, the Kubernetes binaries, helm and kube-score, CoreDNS,
# the fuzz targets, the release binaries, kwok. When a build ends, built or not, DIR/NAME.done is
# written and its output is in DIR/NAME.log. A step waits for its mark, then runs its own
# install, which finds the build up to date, or builds it in the foreground and fails loudly.
# The Go builds share one build cache and run strictly in turn (two of them empty it after
# building, NEXUS_KUBE_PRUNE_BUILD_CACHE). Uses the environment scripts/integration.sh exports.
set -uo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/prebuild.sh DIR}
mkdir -p "$dir"
renice -n 19 -p $$ >/dev/null
ionice -c 3 -p $$ 2>/dev/null || true

build() { # NAME COMMAND...
  local name=$1 t0=$SECONDS
  shift
  if "$@" >"$dir/$name.log" 2>&1; then
    echo "prebuild: $name built in $((SECONDS - t0))s"
  else
    echo "prebuild: $name failed after $((SECONDS - t0))s; its step builds it again (log: $dir/$name.log)"
  fi
  touch "$dir/$name.done"
}

build dex scripts/dex.sh install
build kube scripts/kube-apiserver.sh install
build helm-tools bash scripts/helm-check.sh --tools-only
build coredns scripts/cluster-dns.sh install
build fuzz bash scripts/fuzz.sh --build-only
build release cargo build --release --quiet
build kwok scripts/kwok.sh install
echo "prebuild: all done"
