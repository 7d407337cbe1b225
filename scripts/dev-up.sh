#!/usr/bin/env bash
# Brings up the whole stack on this machine: Postgres and NATS (started, or
# installed, when missing), migrations, the four binaries with development
# settings; then prints a development token and curl examples.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
echo "building..."
cargo build --workspace --bins --quiet
BIN="$CARGO_TARGET_DIR/debug"

# Development settings; every one can be overridden from the environment.
# The binaries default to APP_ENV=production, which refuses the development
# secret and key below (they are public: shared::config::DEV_*).
export APP_ENV="${APP_ENV:-development}"
export LOG_FORMAT="${LOG_FORMAT:-pretty}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/voice_control_plane}"
export NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
export JWT_SECRET="${JWT_SECRET:-development-only-jwt-secret-change-me-0123456789}"
export JWT_ISSUER="${JWT_ISSUER:-voice-control-plane}"
export JWT_AUDIENCE="${JWT_AUDIENCE:-voice-control-plane-api}"
export ENCRYPTION_KEY="${ENCRYPTION_KEY:-ZGV2ZWxvcG1lbnQtb25seS1rZXktMzItYnl0ZXMhISE=}"
export DEV_BOOTSTRAP_KEY="${DEV_BOOTSTRAP_KEY:-dev-bootstrap-key}"
export AUTH_BOOTSTRAP_KEY="${AUTH_BOOTSTRAP_KEY:-dev-auth-bootstrap-key}"
export TWILIO_AUTH_TOKEN="${TWILIO_AUTH_TOKEN:-dev-twilio-auth-token}"
export TWILIO_WEBHOOK_BASE_URL="${TWILIO_WEBHOOK_BASE_URL:-http://127.0.0.1:4001}"
export AUTOMATION_ALLOW_PRIVATE_NETWORKS="${AUTOMATION_ALLOW_PRIVATE_NETWORKS:-true}"

mkdir -p .stack
"$BIN/api" migrate >.stack/migrate.log 2>&1 || { cat .stack/migrate.log; exit 1; }

pids=()
cleanup() {
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start() {
  local name=$1 addr=$2
  LISTEN_ADDR="$addr" "$BIN/$name" >".stack/$name.log" 2>&1 &
  pids+=($!)
}
start api 127.0.0.1:4000
start webhook-ingress 127.0.0.1:4001
start automation-worker 127.0.0.1:4002
start dispatch-worker 127.0.0.1:4003

for port in 4000 4001 4002 4003; do
  ok=""
  for _ in $(seq 1 60); do
    if curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1; then ok=1; break; fi
    sleep 0.5
  done
  if [ -z "$ok" ]; then
    echo "error: service on port $port is not ready; logs in .stack/" >&2
    tail -n 20 .stack/*.log >&2
    exit 1
  fi
done

# A first admin for local use (or a login when it exists already).
ADMIN_EMAIL="${DEV_ADMIN_EMAIL:-admin@example.com}"
ADMIN_PASSWORD="${DEV_ADMIN_PASSWORD:-dev-password-123}"
resp=$(curl -sS -X POST http://127.0.0.1:4000/auth/register-first-admin \
  -H 'content-type: application/json' \
  -d "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\",\"tenant_name\":\"Dev tenant\"}")
if ! echo "$resp" | grep -q '"token"'; then
  resp=$(curl -sS -X POST http://127.0.0.1:4000/auth/login \
    -H 'content-type: application/json' \
    -d "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\"}")
fi
TOKEN=$(echo "$resp" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
if [ -z "$TOKEN" ]; then
  echo "error: could not get a development token: $resp" >&2
  exit 1
fi
TENANT_ID=$(curl -sS http://127.0.0.1:4000/auth/me -H "authorization: Bearer $TOKEN" | sed -n 's/.*"tenant_id":"\([^"]*\)".*/\1/p')
echo "$TOKEN" > .stack/token

cat <<MSG

The stack is up (logs in .stack/, Ctrl-C stops it):
  api               http://127.0.0.1:4000   (OpenAPI: /openapi.json)
  webhook-ingress   http://127.0.0.1:4001
  automation-worker http://127.0.0.1:4002   (health and metrics)
  dispatch-worker   http://127.0.0.1:4003   (health and metrics)

Development admin: $ADMIN_EMAIL / $ADMIN_PASSWORD, tenant $TENANT_ID
Token (also in .stack/token):
  export TOKEN=$TOKEN

Try:
  curl -s http://127.0.0.1:4000/auth/me -H "authorization: Bearer \$TOKEN"
  curl -s http://127.0.0.1:4000/health/ready
  curl -s http://127.0.0.1:4000/internal/dev/token -H 'content-type: application/json' \\
    -H "x-dev-bootstrap-key: $DEV_BOOTSTRAP_KEY" \\
    -d '{"user_id":"user-1","tenant_id":"$TENANT_ID","role":"internal_operator","is_internal":true,"expires_in":"1h"}'
  curl -s http://127.0.0.1:4000/metrics | head
MSG
if [ -f scripts/dev-examples.sh ]; then
  TOKEN="$TOKEN" TENANT_ID="$TENANT_ID" bash scripts/dev-examples.sh
fi

if [ "${DEV_UP_DETACH:-}" = "1" ]; then
  trap - EXIT INT TERM
  echo "detached: stop with  kill ${pids[*]}"
  exit 0
fi
wait
