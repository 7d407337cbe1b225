#!/usr/bin/env bash
# Benchmark of the client read API: loads one tenant with BENCH_SIZES calls
# (default 1,000,000; "1000000 10000000" runs both) and 10 tenants with
# 100,000 into a database per size, starts a release build of the api
# against it, and prints p50/p99 latency of GET /client/kpis (1, 30 and
# 366 days), of the calls list and of its search: first with every KPI read
# from the rows (the rollups dropped), then with the rollups computed.
#
#   scripts/bench-client-api.sh            # reuses a loaded data set
#   scripts/bench-client-api.sh --fresh    # drops and reloads the databases
#   BENCH_SIZES="1000000 10000000" scripts/bench-client-api.sh
#
# Settings: BENCH_SIZES, BENCH_DATABASE (default client_bench; a size other
# than 1,000,000 gets a suffix), BENCH_PORT (4106), BENCH_SAMPLES (300),
# PG_URL (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
SIZES="${BENCH_SIZES:-1000000}"
PORT="${BENCH_PORT:-4106}"
SAMPLES="${BENCH_SAMPLES:-300}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
export JWT_SECRET="client-bench-secret-0123456789abcdef0123456789"
export RUST_LOG="${RUST_LOG:-warn}"
export APP_ENV=development
# The rows-only pass reads a year of a big tenant: more than the default 5 s.
export CLIENT_READ_STATEMENT_TIMEOUT="${CLIENT_READ_STATEMENT_TIMEOUT:-120s}"

bash scripts/services.sh
cargo build --release --locked -p api -p bench --bin client-bench --bin api
BIN="$CARGO_TARGET_DIR/release"

API_PID=
stop_api() {
  if [ -n "$API_PID" ]; then
    kill "$API_PID" 2>/dev/null || true
    wait "$API_PID" 2>/dev/null || true
    API_PID=
  fi
}
trap stop_api EXIT

for size in $SIZES; do
  DB="${BENCH_DATABASE:-client_bench}"
  if [ "$size" != 1000000 ]; then DB="${DB}_$size"; fi
  export DATABASE_URL="$PG_URL/$DB"
  echo "== $size calls in the big tenant (database $DB)"
  if [ "${1:-}" = "--fresh" ]; then
    psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null
  fi
  if ! psql "$PG_URL/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    psql "$PG_URL/postgres" -qc "CREATE DATABASE $DB" >/dev/null
  fi
  "$BIN/client-bench" load --big-calls "$size"

  LISTEN_ADDR="127.0.0.1:$PORT" NATS_SUBJECT_PREFIX="clientbench" "$BIN/api" &
  API_PID=$!
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null

  "$BIN/client-bench" rollups --drop
  "$BIN/client-bench" measure --api-url "http://127.0.0.1:$PORT" --samples "$SAMPLES" \
    --kpis-only --label "KPIs from the rows (no rollups)"
  "$BIN/client-bench" rollups
  "$BIN/client-bench" measure --api-url "http://127.0.0.1:$PORT" --samples "$SAMPLES" \
    --label "with the rollups computed"
  stop_api
done
