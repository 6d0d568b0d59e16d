#!/usr/bin/env bash
# Runs lint, then each test tier, and says how long each took. Any failure fails the whole run,
# and a tier that collects no test (pytest exit code 5) fails too: a test run that ran nothing
# must never pass silently.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
declare -a report=()
status=0

tier() {
  local name=$1; shift
  local start end rc
  start=$(date +%s)
  echo "=== tier: $name"
  "$@"
  rc=$?
  end=$(date +%s)
  report+=("$(printf '%-12s %5ds  exit %d' "$name" $((end - start)) "$rc")")
  if [[ $rc -eq 5 ]]; then echo "tier $name collected no tests: failing"; fi
  if [[ $rc -ne 0 ]]; then status=1; fi
}

tier lint make --no-print-directory lint
# The tiers follow the folders (tests/conftest.py): unit (pure), inprocess (loopback gRPC, CLI
# subprocesses, short runs), then slow: tests/cluster/ and the slow-marked tests of inprocess/.
tier unit "$BIN/python" -m pytest -q -p no:cacheprovider tests/unit
tier inprocess "$BIN/python" -m pytest -q -m "not slow" -p no:cacheprovider tests/inprocess
tier slow "$BIN/python" -m pytest -q -m slow -p no:cacheprovider

echo "=== tier timings"
printf '%s\n' "${report[@]}"
exit $status
