#!/usr/bin/env bash
# Tests of the Python SDK (sdk/python, issue #23): lint (ruff), type check (mypy --strict) and
# pytest against a real `nexus standalone` that the tests' fixture starts on a free loopback port
# with the embedded store, running the Python example algorithm (examples/python) and a test
# algorithm as real processes.
#
#   scripts/python-sdk-test.sh [pytest args...]
#
# Creates a fresh venv under $NEXUS_PYSDK_WORK (default ${TMPDIR:-/tmp}/nexus-python-sdk),
# installs the package, the example and the pinned tools from PyPI into it, and runs:
#   ruff check + ruff format --check   (package, tests, example)
#   mypy --strict                      (package; the example against the installed package)
#   pytest sdk/python/tests            (needs the nexus binary: $NEXUS_BIN, default
#                                       target/debug/nexus; build it with cargo build -p nexus-cli)
# Nothing is skipped: a missing binary, interpreter or package fails the run.
#
# Environment: NEXUS_BIN, NEXUS_PYSDK_WORK, NEXUS_PYSDK_PYTHON (default python3, >= 3.10).
# Requires: python3 with the venv module, network access to PyPI.
set -euo pipefail

log() { printf 'python-sdk-test: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work="${NEXUS_PYSDK_WORK:-${TMPDIR:-/tmp}/nexus-python-sdk}"
python="${NEXUS_PYSDK_PYTHON:-python3}"
export NEXUS_BIN="${NEXUS_BIN:-$repo/target/debug/nexus}"

# Pinned tools (the package itself only needs httpx).
PYTEST_VERSION=9.2.0
RUFF_VERSION=0.17.6
MYPY_VERSION=2.4.1

# Debian splits venv (ensurepip) out of python3.
# shellcheck source=lib/apt.sh
source "$repo/scripts/lib/apt.sh"
"$python" -c 'import ensurepip' 2>/dev/null || apt_ensure python-sdk-test /nonexistent-ensurepip:python3-venv
[[ -x "$NEXUS_BIN" ]] || die "no nexus binary at $NEXUS_BIN: run cargo build -p nexus-cli (or set NEXUS_BIN)"
command -v "$python" >/dev/null || die "$python not found (set NEXUS_PYSDK_PYTHON)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "$python is older than 3.10"
case "$work" in *" "*) die "NEXUS_PYSDK_WORK must not contain spaces (template commands are split on spaces)";; esac

log "venv in $work/venv"
mkdir -p "$work"
rm -rf "$work/venv" "$work/pytest"
"$python" -m venv "$work/venv"
venv="$work/venv/bin"
"$venv/pip" install --quiet --disable-pip-version-check \
  "$repo/sdk/python" "$repo/examples/python" \
  "pytest==$PYTEST_VERSION" "ruff==$RUFF_VERSION" "mypy==$MYPY_VERSION"

cd "$repo/sdk/python"
log "ruff"
"$venv/ruff" check --no-cache --config pyproject.toml src tests "$repo/examples/python/nexus_example_squares.py"
"$venv/ruff" format --no-cache --config pyproject.toml --check src tests "$repo/examples/python/nexus_example_squares.py"
log "mypy --strict"
"$venv/mypy" --strict --cache-dir "$work/mypy-cache" src
# The example against the installed package: also proves the wheel ships py.typed.
(cd "$work" && "$venv/mypy" --strict --cache-dir "$work/mypy-cache" \
  "$repo/examples/python/nexus_example_squares.py")
log "pytest (nexus: $NEXUS_BIN)"
"$venv/python" -m pytest -p no:cacheprovider --basetemp="$work/pytest" tests "$@"
log "ok"
