#!/usr/bin/env bash
# Runs each cargo-fuzz target of fuzz/ for a bounded time (FUZZ_SECONDS, default 45 s each):
# the request splitter, the template manifest parser, and signed-URL / run-token verification.
# Installs cargo-fuzz (crates.io) and uses the nightly toolchain rustup has (libFuzzer needs it).
# Exits non-zero on the first crash or failed property; the crashing input is kept under
# fuzz/artifacts/<target>/ and printed. `scripts/fuzz.sh --build-only` stops after the build
# (scripts/prebuild.sh builds the targets in the background).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-45}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.1 --quiet
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 1
fi
targets=(request_split template_manifest signed_url)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "fuzz: building the targets (nightly, no sanitizer: coverage-guided only, a shorter build)"
cargo +nightly fuzz build -s none
[[ "${1:-}" == --build-only ]] && exit 0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "fuzz: $t for ${seconds}s"
  if ! cargo +nightly fuzz run -s none "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t found a failing input (kept in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$log" || true
done
echo "fuzz: all targets ran ${seconds}s each without a failure"
