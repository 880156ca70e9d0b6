#!/usr/bin/env bash
# The README as a newcomer runs it (issue #25): every ```sh block of README.md and
# examples/README.md, as written, from the repository root.
#
#   1. README's first block is the run command: started in the background (it builds the release
#      binaries if needed, then serves on 127.0.0.1:8090 with a fresh .nexus-data) and waited for
#      (readyz, bounded);
#   2. README's second block is the test command, `cargo test --workspace`: not run here, it is
#      .ci/run's own first step (checked to be exactly that);
#   3. every other block, README's then examples/README.md's, runs in order in one
#      `bash -euo pipefail`, so a failing command fails the test;
#   4. the server is stopped with SIGTERM and must exit 0.
#
# Usage: scripts/readme-test.sh   (port 8090 must be free; .nexus-data is moved aside and restored)
# Requires: python3, curl.
set -euo pipefail

log() { printf 'readme-test: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
work=$(mktemp -d /tmp/nexus-readme.XXXXXX)
server_pid=""
cleanup() {
  # The run command runs in its own process group (setsid): stop all of it, nexus included.
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then kill -TERM -- "-$server_pid" 2>/dev/null || true; fi
  rm -rf "$repo/.nexus-data"
  [[ -d $work/saved-data ]] && mv "$work/saved-data" "$repo/.nexus-data"
  rm -rf "$work"
}
trap cleanup EXIT

# blocks FILE DIR: writes FILE's ```sh blocks to DIR/0.sh, DIR/1.sh, …; prints their count.
blocks() {
  python3 - "$1" "$2" <<'PY'
import pathlib, re, sys
text = pathlib.Path(sys.argv[1]).read_text()
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
found = re.findall(r"^```sh\n(.*?)^```$", text, flags=re.S | re.M)
for i, b in enumerate(found):
    (out / f"{i}.sh").write_text(b)
print(len(found))
PY
}

n=$(blocks README.md "$work/readme")
((n >= 3)) || die "README.md has $n sh blocks; expected the run command, the test command and the tour"
run_cmd=$(<"$work/readme/0.sh")
[[ $run_cmd == "cargo build --release && ./target/release/nexus standalone --templates examples/templates" ]] \
  || die "README's first sh block is not the run command: $run_cmd"
[[ $(<"$work/readme/1.sh") == "cargo test --workspace" ]] || die "README's second sh block is not the test command"
grep -qF 'cargo test --workspace' .ci/run || die ".ci/run does not run the README's test command"

[[ -e .nexus-data ]] && mv .nexus-data "$work/saved-data"
log "1. the run command (build, then serve)"
if curl -fsS --max-time 2 -o /dev/null http://127.0.0.1:8090/ 2>/dev/null; then
  die "something already serves 127.0.0.1:8090: stop it first"
fi
setsid bash "$work/readme/0.sh" >"$work/server.log" 2>&1 &
server_pid=$!
ready=0
for _ in $(seq 1 1800); do   # the build may take a while; bounded at 30 minutes
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; die "the run command exited"; }
  if curl -fsS --max-time 2 http://127.0.0.1:8090/health/readyz >/dev/null 2>&1; then ready=1; break; fi
  sleep 1
done
((ready)) || { tail -50 "$work/server.log" >&2; die "not ready on 127.0.0.1:8090"; }

m=$(blocks examples/README.md "$work/examples")
{
  echo 'set -euo pipefail'
  for ((i = 2; i < n; i++)); do echo "echo '--- README.md block $((i + 1))'"; cat "$work/readme/$i.sh"; done
  for ((i = 0; i < m; i++)); do echo "echo '--- examples/README.md block $((i + 1))'"; cat "$work/examples/$i.sh"; done
} >"$work/tour.sh"
log "2. the tour: $((n - 2)) README blocks, $m examples/README.md blocks"
if ! timeout 600 bash "$work/tour.sh" >"$work/tour.log" 2>&1; then
  cat "$work/tour.log" >&2
  tail -30 "$work/server.log" >&2
  die "a README command failed (above)"
fi
cat "$work/tour.log" >&2

log "3. SIGTERM"
# The run command is `cargo build … && ./target/release/nexus …`: bash waits for nexus, whose exit
# status becomes the block's. The signal goes to nexus itself, as Ctrl-C or a supervisor would.
nexus_pid=$(pgrep -P "$server_pid" -x nexus || true)
[[ -n $nexus_pid ]] || die "no nexus process under the run command"
kill -TERM "$nexus_pid"
rc=0
wait "$server_pid" || rc=$?
server_pid=""
((rc == 0)) || { tail -30 "$work/server.log" >&2; die "the server exited $rc after SIGTERM"; }
log "OK: every README command ran as written"
