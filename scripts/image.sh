#!/usr/bin/env bash
# Builds the Nexus container image (Containerfile) without any container registry, then
# smoke-tests it: the image starts standalone, answers /health/readyz through a port mapping, and a
# knapsack run completes inside it (issue #19).
#
#   scripts/image.sh                 # base (cached), image, smoke test
#
# The binaries are not compiled here: the image takes nexus and nexus-demo from NEXUS_BIN_DIR
# (`cargo build --release -p nexus-cli -p nexus-examples`, which CI's release build already did),
# so CI compiles Rust once.
#
# No base image can be pulled here, so the base is made from Debian packages: `debootstrap
# --variant=minbase` of NEXUS_IMAGE_SUITE with ca-certificates, trimmed (no apt lists, .debs, docs,
# man pages, translations), imported into podman as NEXUS_IMAGE_BASE. The trimmed root file system
# is cached as a tarball in NEXUS_IMAGE_CACHE; the image in podman's store is reused as it is.
#
# Podman on these machines (Debian's podman 4.3 and runc 1.1; see
# /work/shared/reference/real-node.md):
# * `--runtime runc`: crun refuses the hybrid cgroup v1 layout; runc treats it as v1.
# * `--ulimit nofile=1024:1024 --ulimit nproc=4096:4096` on `podman run`: without CAP_SYS_RESOURCE
#   the runtime cannot raise rlimits, and podman's default nofile is above the hard limit here:
#   without the flag `runc create` fails with "error setting rlimit type 7: operation not
#   permitted". (`podman build` RUN steps start fine without it.)
# * Nothing else: rootful podman with its default CNI bridge network (`-p 127.0.0.1:PORT:8090`
#   works, no --network needed) and the cgroupfs cgroup manager (no systemd); Landlock (which
#   confines the algorithms) works inside the container.
#
# Environment (all optional):
#   NEXUS_BIN_DIR         directory with nexus and nexus-demo (default <repo>/target/release)
#   NEXUS_IMAGE_CACHE     cache of the base root file system (default <repo>/target/image-cache)
#   NEXUS_IMAGE           tag of the image built (default localhost/nexus:dev)
#   NEXUS_IMAGE_BASE      tag of the base image (default localhost/nexus-base:<suite>)
#   NEXUS_IMAGE_SUITE     Debian release of the base (default trixie)
#   NEXUS_DEBIAN_MIRROR   Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   NEXUS_IMAGE_REBASE=1  make the base again even if cached
#   NEXUS_IMAGE_PORT      host port of the smoke test, on 127.0.0.1 (default 18095)
#   NEXUS_IMAGE_SMOKE=0   build only, no smoke test
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

bin_dir=${NEXUS_BIN_DIR:-$repo/target/release}
cache=${NEXUS_IMAGE_CACHE:-$repo/target/image-cache}
suite=${NEXUS_IMAGE_SUITE:-trixie}
mirror=${NEXUS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
image=${NEXUS_IMAGE:-localhost/nexus:dev}
base=${NEXUS_IMAGE_BASE:-localhost/nexus-base:$suite}
port=${NEXUS_IMAGE_PORT:-18095}
container=nexus-image-smoke-$$
runtime=(--runtime runc)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096)

t_start=$(date +%s.%N)
phase_start=$t_start
timings=()
say() { echo "image: $*"; }
die() { echo "image: FAILED: $*" >&2; exit 1; }
# done_phase NAME: records how long the phase since the previous one took.
done_phase() {
  local now
  now=$(date +%s.%N)
  timings+=("$(awk -v a="$phase_start" -v b="$now" -v n="$1" 'BEGIN { printf "%-11s %6.1f s", n, b - a }')")
  phase_start=$now
}
print_timings() {
  local now
  now=$(date +%s.%N)
  say "timings:"
  for t in "${timings[@]}"; do echo "  $t"; done
  awk -v a="$t_start" -v b="$now" 'BEGIN { printf "  %-11s %6.1f s\n", "total", b - a }'
}

rootfs=""
cleanup() {
  local rc=$?
  if [[ -n "$rootfs" && -d "$rootfs" ]]; then
    # debootstrap unmounts what it mounted; a failure half-way may leave /proc or /sys mounted.
    for m in proc sys dev/pts; do umount "$rootfs/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$rootfs"
  fi
  if podman container exists "$container" 2>/dev/null; then
    if [[ $rc != 0 ]]; then
      echo "image: the container's state and logs:" >&2
      podman inspect --format 'state {{.State.Status}}, exit code {{.State.ExitCode}} {{.State.Error}}' "$container" >&2 || true
      podman logs "$container" 2>&1 | tail -n 100 >&2 || true
    fi
    podman rm -f -v -t 0 "$container" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# ---- tools
source "$repo/scripts/lib/apt.sh"
apt_ensure image podman:podman runc:runc debootstrap:debootstrap curl:curl python3:python3 ||
  die "cannot install the tools"
[[ $(id -u) == 0 ]] || die "run as root: debootstrap and rootful podman need it (podman's rootless mode needs subordinate ids and user namespaces, not set up here)"
done_phase tools

for b in nexus nexus-demo; do
  [[ -x "$bin_dir/$b" ]] || die "$bin_dir/$b is missing: build it first (cargo build --release -p nexus-cli -p nexus-examples) or set NEXUS_BIN_DIR"
done

# ---- base image
if [[ "${NEXUS_IMAGE_REBASE:-0}" != 1 ]] && podman image exists "$base"; then
  say "base $base: in podman's store already"
else
  mkdir -p "$cache"
  tarball="$cache/base-$suite.tar"
  if [[ "${NEXUS_IMAGE_REBASE:-0}" == 1 || ! -s "$tarball" ]]; then
    rootfs="$cache/rootfs-$suite"
    rm -rf --one-file-system "$rootfs"
    say "base: debootstrap --variant=minbase $suite from $mirror (log: $cache/debootstrap.log)"
    timeout 900 debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" "$mirror" \
      >"$cache/debootstrap.log" 2>&1 || { tail -n 30 "$cache/debootstrap.log" >&2; die "debootstrap $suite failed"; }
    # Trim what an image does not need; the apt sources stay, so `apt-get update` works in it.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
      "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
      "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log \
      "$rootfs"/var/log/apt/* "$rootfs"/dev/* "$rootfs"/proc/* "$rootfs"/sys/* "$rootfs"/run/*
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf --one-file-system "$rootfs"
    rootfs=""
    done_phase debootstrap
  else
    say "base: using the cached root file system $tarball"
  fi
  podman rmi -f "$base" >/dev/null 2>&1 || true
  podman import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' --message "debootstrap --variant=minbase $suite" \
    "$tarball" "$base" >/dev/null || die "podman import of $tarball failed"
  say "base $base: $(podman image inspect --format '{{.Size}}' "$base" | awk '{printf "%.0f MB", $1/1e6}')"
fi
done_phase base

# ---- image
# The binaries are staged inside the build context (target/image-bin, let in by .dockerignore):
# a hard link when on the same file system, so nothing is copied.
stage="$repo/target/image-bin"
mkdir -p "$stage"
for b in nexus nexus-demo; do
  ln -f "$bin_dir/$b" "$stage/$b" 2>/dev/null || cp -f "$bin_dir/$b" "$stage/$b"
done
say "building $image from $bin_dir on $base"
previous=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
timeout 600 podman build "${runtime[@]}" --file Containerfile --tag "$image" \
  --build-arg BASE="$base" --build-arg BINARIES=prebuilt --build-arg BIN_DIR=target/image-bin \
  --pull=never . || die "podman build failed"
# Every build leaves the binaries stage (~binary size) and the image it replaced untagged in
# podman's store; remove them so that repeated runs do not fill the disk. (`--layers=false` would
# not keep them, but podman 4.3 then fails removing the stage that `FROM ${BINARIES}` reuses.)
podman image prune -f --filter label=nexus.build-stage=binaries >/dev/null || true
if [[ -n "$previous" && "$previous" != "$(podman image inspect --format '{{.Id}}' "$image")" ]]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
say "image $image: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
done_phase build

if [[ "${NEXUS_IMAGE_SMOKE:-1}" == 0 ]]; then
  say "built (NEXUS_IMAGE_SMOKE=0: no smoke test)"
  print_timings
  exit 0
fi

# ---- smoke test
url="http://127.0.0.1:$port"
say "smoke: starting $image as $container, published on 127.0.0.1:$port"
# Locked down as a Kubernetes securityContext would run it: read-only root file system (podman
# mounts a tmpfs on /tmp, where the executor's per-run work directories go; a pod needs an emptyDir
# there), every capability dropped, no privilege gain. Authentication off, written explicitly (it
# listens on 0.0.0.0 in the container; the port is published on loopback only). /var/lib/nexus is an anonymous volume (VOLUME), removed with the container.
podman run -d --name "$container" "${runtime[@]}" "${limits[@]}" \
  --read-only --cap-drop=ALL --security-opt no-new-privileges \
  -e NEXUS__AUTH__MODE=none -p "127.0.0.1:$port:8090" "$image" >/dev/null || die "podman run failed"

ready=0
for _ in $(seq 1 150); do # 30 s
  if [[ $(curl -s -o /dev/null -w '%{http_code}' "$url/health/readyz" 2>/dev/null) == 200 ]]; then
    ready=1
    break
  fi
  [[ $(podman inspect --format '{{.State.Running}}' "$container") == true ]] || die "the container exited before it was ready"
  sleep 0.2
done
[[ $ready == 1 ]] || die "no 200 from $url/health/readyz within 30 s"
done_phase ready

uid=$(podman exec "$container" id -u) || die "podman exec failed"
[[ $uid == 65532 ]] || die "nexus runs as uid $uid, not 65532"

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
answer=$(curl -fsS -X POST "$url/algorithm/v1/run/knapsack" -H 'content-type: application/json' \
  -d "{\"algorithmParameters\": $(cat examples/payloads/knapsack.json), \"tag\": \"image-smoke\"}") ||
  die "submitting a knapsack run failed"
id=$(json '["requestId"]' <<<"$answer") || die "no requestId in $answer"
say "smoke: submitted knapsack run $id"
status=""
for _ in $(seq 1 120); do # 60 s
  status=$(curl -fsS "$url/algorithm/v1/results/knapsack/requests/$id") || die "reading the status of $id failed"
  case $(json '.get("status","")' <<<"$status") in
    COMPLETED) break ;;
    FAILED | CANCELLED | DEADLINE_EXCEEDED | SCHEDULING_FAILED)
      curl -sS "$url/algorithm/v1/metadata/knapsack/requests/$id" >&2 || true
      die "run $id finished but did not complete: $status" ;;
  esac
  sleep 0.5
done
[[ $(json '.get("status","")' <<<"$status") == COMPLETED ]] || {
  curl -sS "$url/algorithm/v1/metadata/knapsack/requests/$id" >&2 || true
  die "run $id not COMPLETED within 60 s: $status"
}
# The signed URL carries the image's --public-url (http://127.0.0.1:8090, what algorithms inside
# the container use); from the host the same path is reached through the published port.
uri=$(json '["resultUri"]' <<<"$status")
result=$(curl -fsS "$url/${uri#http://127.0.0.1:8090/}") || die "reading the result through $uri failed"
say "smoke: run $id COMPLETED, result $result"
python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["totalValue"] == 90, r' <<<"$result" ||
  die "unexpected knapsack result"
done_phase run

podman stop -t 30 "$container" >/dev/null || die "podman stop failed"
code=$(podman inspect --format '{{.State.ExitCode}}' "$container")
[[ $code == 0 ]] || die "nexus exited with $code on SIGTERM (expected 0)"
podman rm -v "$container" >/dev/null
done_phase stop
say "smoke: passed"
print_timings
say "disk: podman's store $(du -sh "$(podman info --format '{{.Store.GraphRoot}}')" 2>/dev/null | cut -f1), base cache $(du -sh "$cache" 2>/dev/null | cut -f1)"
