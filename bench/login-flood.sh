#!/usr/bin/env bash
# Login-flood benchmark: a release api against a database of its
# own; `login-flood` times GET /health with no load, then during a flood of
# bad logins (distinct emails, one client address), twice:
#   1. throttling as configured (LOGIN_MAX_FAILURES_PER_IP=20 by default:
#      this one address gets 429 after 20 failures, so argon2 barely runs);
#   2. LOGIN_MAX_FAILURES_PER_IP raised, so argon2 runs for every login and
#      only PASSWORD_HASH_CONCURRENCY (default 4) bounds the work.
#
#   bash bench/login-flood.sh                    # 200 logins/s for 20 s
#   RATE=200 DURATION=20s bash bench/login-flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RATE="${RATE:-200}"
DURATION="${DURATION:-20s}"
PG="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
RUN="loginflood$(date +%s)"
DB="vcp_$RUN"
PORT="${BENCH_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}"

bash scripts/services.sh >/dev/null
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
echo "building release binaries..."
cargo build --release --quiet -p api -p bench --bin api --bin login-flood
BIN="$CARGO_TARGET_DIR/release"

psql "$PG/postgres" -qAtc "CREATE DATABASE $DB" >/dev/null
export DATABASE_URL="$PG/$DB" NATS_URL NATS_SUBJECT_PREFIX="$RUN" RUST_LOG=warn LOG_FORMAT=json
export APP_ENV=development
export JWT_SECRET="login-flood-secret-0123456789abcdef0123456789"
export ENCRYPTION_KEY="ZGV2ZWxvcG1lbnQtb25seS1rZXktMzItYnl0ZXMhISE="
"$BIN/api" migrate >/dev/null

mkdir -p .stack
API_PID=""
stop_api() {
  if [ -n "$API_PID" ]; then
    kill -TERM "$API_PID" 2>/dev/null || true
    wait "$API_PID" 2>/dev/null || true
    API_PID=""
  fi
}
cleanup() {
  stop_api
  psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

run() {
  local label=$1
  shift
  env "$@" LISTEN_ADDR="127.0.0.1:$PORT" "$BIN/api" >".stack/login-flood-api.log" 2>&1 &
  API_PID=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$PORT/health/ready" >/dev/null
  echo
  echo "== $label =="
  "$BIN/login-flood" --api-url "http://127.0.0.1:$PORT" --rate "$RATE" --duration "$DURATION" --label "$label"
  stop_api
}

run "throttling as configured" LOGIN_MAX_FAILURES_PER_IP="${LOGIN_MAX_FAILURES_PER_IP:-20}"
run "per-address throttle raised: argon2 for every login" LOGIN_MAX_FAILURES_PER_IP=1000000000 LOGIN_MAX_FAILURES_PER_EMAIL=1000000000
echo
echo "machine: $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
