#!/usr/bin/env bash
# Noisy-tenant benchmark: tenant A (1,000,000 calls) runs 50 concurrent
# full-year KPI reads while tenant B claims dispatches and executes tools at
# 50/s. B runs alone first, then beside A; the benchmark prints B's p50/p99
# in both phases, their ratio (target: at most 2x) and B's 503s (target:
# none), and A's reads by status. Uses the client benchmark's data set
# (scripts/bench-client-api.sh loads it, or this script does).
#
# Settings: BENCH_DATABASE (client_bench), BENCH_PORT (4106),
# BENCH_WORKER_PORT (4107), NOISY_DURATION (20s per phase), NOISY_READERS
# (50), NOISY_RATE (50), PG_URL (postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
DB="${BENCH_DATABASE:-client_bench}"
PORT="${BENCH_PORT:-4106}"
WORKER_PORT="${BENCH_WORKER_PORT:-4107}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
export DATABASE_URL="$PG_URL/$DB"
export JWT_SECRET="client-bench-secret-0123456789abcdef0123456789"
export RUST_LOG="${RUST_LOG:-warn}"
export APP_ENV=development
export NATS_SUBJECT_PREFIX="noisybench$$"

bash scripts/services.sh

if ! psql "$PG_URL/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  psql "$PG_URL/postgres" -qc "CREATE DATABASE $DB" >/dev/null
fi

cargo build --release --locked -p api -p bench -p automation-worker \
  --bin client-bench --bin api --bin automation-worker
BIN="$CARGO_TARGET_DIR/release"

"$BIN/client-bench" load

pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
mkdir -p .stack
# B's single call may run as many tools as the benchmark sends.
LISTEN_ADDR="127.0.0.1:$PORT" AUTOMATION_MAX_EXECUTIONS_PER_MINUTE=100000 \
  "$BIN/api" >.stack/noisy-api.log 2>&1 &
pids+=($!)
# The n8n stand-in listens on 127.0.0.1, inside the benchmark.
LISTEN_ADDR="127.0.0.1:$WORKER_PORT" AUTOMATION_ALLOW_PRIVATE_NETWORKS=true \
  "$BIN/automation-worker" >.stack/noisy-worker.log 2>&1 &
pids+=($!)
for port in "$PORT" "$WORKER_PORT"; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null \
    || { echo "service on :$port not ready; see .stack/noisy-*.log" >&2; exit 1; }
done

"$BIN/client-bench" noisy --api-url "http://127.0.0.1:$PORT" \
  --duration "${NOISY_DURATION:-20s}" --readers "${NOISY_READERS:-50}" --rate "${NOISY_RATE:-50}"
