#!/usr/bin/env bash
# Benchmark of the client read API: loads one tenant with 1,000,000
# calls and 10 tenants with 100,000 into its own database, starts a release
# build of the api against it, and prints p50/p99 latency of GET /client/kpis
# (30 days) and of the first and a deep page of GET /client/calls.
#
#   scripts/bench-client-api.sh            # reuses the data set when loaded
#   scripts/bench-client-api.sh --fresh    # drops and reloads the database
#
# Settings: BENCH_DATABASE (default client_bench), BENCH_PORT (4106),
# BENCH_SAMPLES (300), PG_URL (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
DB="${BENCH_DATABASE:-client_bench}"
PORT="${BENCH_PORT:-4106}"
SAMPLES="${BENCH_SAMPLES:-300}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
export DATABASE_URL="$PG_URL/$DB"
export JWT_SECRET="client-bench-secret-0123456789abcdef0123456789"
export RUST_LOG="${RUST_LOG:-warn}"
export APP_ENV=development

bash scripts/services.sh

if [ "${1:-}" = "--fresh" ]; then
  psql "$PG_URL/postgres" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null
fi
if ! psql "$PG_URL/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  psql "$PG_URL/postgres" -qc "CREATE DATABASE $DB" >/dev/null
fi

cargo build --release --locked -p api -p bench --bin client-bench --bin api
BIN="$CARGO_TARGET_DIR/release"

"$BIN/client-bench" load

LISTEN_ADDR="127.0.0.1:$PORT" NATS_SUBJECT_PREFIX="clientbench" "$BIN/api" &
API_PID=$!
trap 'kill "$API_PID" 2>/dev/null || true; wait "$API_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null

"$BIN/client-bench" measure --api-url "http://127.0.0.1:$PORT" --samples "$SAMPLES"
