#!/usr/bin/env bash
# The whole test suite: starts Postgres and NATS when they are not up, then
# runs every crate's unit and integration tests against them.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

# Tests create one database per test (#[sqlx::test]) from this superuser URL.
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
# A cargo target folder outside the clone, reused between runs.
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
export RUST_LOG="${RUST_LOG:-warn}"

bash scripts/build.sh
log=$(mktemp)
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
count() { grep -E '^test result: ' "$log" | grep -Eo "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
passed=$(count passed)
failed=$(count failed)
# Ignored tests are the benchmarks (run on purpose; docs/benchmarks.md).
ignored=$(count ignored)
summary="tests: $passed passed, $failed failed, $ignored ignored"
rm -f "$log"
echo "$summary"
if [ -n "${TEST_SUMMARY_FILE:-}" ]; then echo "$summary" >"$TEST_SUMMARY_FILE"; fi
exit "$status"
