#!/usr/bin/env bash
# Brings up the whole stack on this machine: Postgres and NATS (started, or
# installed, when missing), migrations, the four binaries with development
# settings, the reference voice runtime and a stand-in n8n; prints a
# development token and curl examples, then sends a demo call all the way
# through (scripts/dev-examples.sh). Ctrl-C stops everything; with
# DEV_UP_DETACH=1 it keeps running and scripts/dev-down.sh stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -s .stack/pids ]; then
  while read -r pid; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "error: a stack started earlier is still running (pids in .stack/pids);" >&2
      echo "stop it first: scripts/dev-down.sh" >&2
      exit 1
    fi
  done <.stack/pids
fi

bash scripts/services.sh

export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
bash scripts/build.sh
BIN="$CARGO_TARGET_DIR/debug"

# Development settings; every one can be overridden from the environment.
# The binaries default to APP_ENV=production, which refuses the development
# secret and key below (they are public: shared::config::DEV_*).
export APP_ENV="${APP_ENV:-development}"
export LOG_FORMAT="${LOG_FORMAT:-pretty}"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/voice_control_plane}"
export JWT_SECRET="${JWT_SECRET:-development-only-jwt-secret-change-me-0123456789}"
export JWT_ISSUER="${JWT_ISSUER:-voice-control-plane}"
export JWT_AUDIENCE="${JWT_AUDIENCE:-voice-control-plane-api}"
export ENCRYPTION_KEY="${ENCRYPTION_KEY:-ZGV2ZWxvcG1lbnQtb25seS1rZXktMzItYnl0ZXMhISE=}"
export DEV_BOOTSTRAP_KEY="${DEV_BOOTSTRAP_KEY:-dev-bootstrap-key}"
export AUTH_BOOTSTRAP_KEY="${AUTH_BOOTSTRAP_KEY:-dev-auth-bootstrap-key}"
export TWILIO_AUTH_TOKEN="${TWILIO_AUTH_TOKEN:-dev-twilio-auth-token}"
export TWILIO_WEBHOOK_BASE_URL="${TWILIO_WEBHOOK_BASE_URL:-http://127.0.0.1:4001}"
# The ingress's readiness and metrics (its public port serves only Twilio).
export OPS_LISTEN_ADDR="${OPS_LISTEN_ADDR:-127.0.0.1:4011}"
export AUTOMATION_ALLOW_PRIVATE_NETWORKS="${AUTOMATION_ALLOW_PRIVATE_NETWORKS:-true}"
# Where Twilio would open the call's media stream. Nothing listens there
# locally (no Twilio calls in); it makes the ingress answer with
# <Connect><Stream> and hand the call to a runtime, the reference runtime.
export TWILIO_MEDIA_STREAM_URL="${TWILIO_MEDIA_STREAM_URL:-wss://127.0.0.1:4006/media}"

mkdir -p .stack
pids=()
# Saved as they start, so scripts/dev-down.sh can stop a detached stack.
: >.stack/pids
track() {
  pids+=("$1")
  echo "$1" >>.stack/pids
}
cleanup() {
  echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f .stack/pids
}
trap cleanup EXIT INT TERM

# NATS with the deployment's configuration (deploy/nats/nats.conf): each
# service connects as its own user and may use only its own subjects. A
# NATS_URL given from outside is used as it is instead.
export NATS_API_PASSWORD="${NATS_API_PASSWORD:-dev-nats-api}"
export NATS_INGRESS_PASSWORD="${NATS_INGRESS_PASSWORD:-dev-nats-ingress}"
export NATS_DISPATCH_PASSWORD="${NATS_DISPATCH_PASSWORD:-dev-nats-dispatch}"
export NATS_AUTOMATION_PASSWORD="${NATS_AUTOMATION_PASSWORD:-dev-nats-automation}"
export NATS_RUNTIME_PASSWORD="${NATS_RUNTIME_PASSWORD:-dev-nats-runtime}"
nats_password_of() {
  case $1 in
    api) echo "$NATS_API_PASSWORD" ;;
    webhook-ingress) echo "$NATS_INGRESS_PASSWORD" ;;
    dispatch-worker) echo "$NATS_DISPATCH_PASSWORD" ;;
    automation-worker) echo "$NATS_AUTOMATION_PASSWORD" ;;
  esac
}
if [ -z "${NATS_URL:-}" ]; then
  DEV_NATS_PORT="${DEV_NATS_PORT:-4322}"
  export NATS_URL="nats://127.0.0.1:$DEV_NATS_PORT"
  nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  mkdir -p .stack/nats
  "$nats_bin" -c deploy/nats/nats.conf -a 127.0.0.1 -p "$DEV_NATS_PORT" -m "$((DEV_NATS_PORT + 1))" \
    -sd .stack/nats >.stack/nats.log 2>&1 &
  track $!
  for _ in $(seq 1 40); do
    (exec 3<>"/dev/tcp/127.0.0.1/$DEV_NATS_PORT") 2>/dev/null && break
    sleep 0.25
  done
  DEV_NATS_USERS=1
fi

"$BIN/api" migrate >.stack/migrate.log 2>&1 || { cat .stack/migrate.log; exit 1; }

start() {
  local name=$1 addr=$2
  if [ -n "${DEV_NATS_USERS:-}" ]; then
    NATS_USER="$name" NATS_PASSWORD="$(nats_password_of "$name")" LISTEN_ADDR="$addr" \
      "$BIN/$name" >".stack/$name.log" 2>&1 &
  else
    LISTEN_ADDR="$addr" "$BIN/$name" >".stack/$name.log" 2>&1 &
  fi
  track $!
}
start api 127.0.0.1:4000
start webhook-ingress 127.0.0.1:4001
start automation-worker 127.0.0.1:4002
start dispatch-worker 127.0.0.1:4003
# A stand-in for the tenant's n8n, for the demo agent's tool.
DEMO_N8N_LISTEN=127.0.0.1:4005 "$BIN/demo-n8n" >.stack/demo-n8n.log 2>&1 &
track $!

# The ingress reports readiness on its ops port (4011), not the public one.
for port in 4000 4011 4002 4003; do
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

# The reference voice runtime (examples/runtime): NATS user `runtime`, and a
# `runtime` token of the tenant it serves, minted with the development key.
RUNTIME_TOKEN=$(curl -sS http://127.0.0.1:4000/internal/dev/token -H 'content-type: application/json' \
  -H "x-dev-bootstrap-key: $DEV_BOOTSTRAP_KEY" \
  -d "{\"user_id\":\"reference-runtime\",\"tenant_id\":\"$TENANT_ID\",\"role\":\"runtime\",\"is_internal\":false,\"expires_in\":\"24h\"}" \
  | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
if [ -z "$RUNTIME_TOKEN" ]; then
  echo "error: could not mint the runtime's token" >&2
  exit 1
fi
# Turns of a second or so, so the demo conversation lasts a few seconds.
export RUNTIME_TURN_PAUSE="${RUNTIME_TURN_PAUSE:-700ms}"
if [ -n "${DEV_NATS_USERS:-}" ]; then
  NATS_USER=runtime NATS_PASSWORD="$NATS_RUNTIME_PASSWORD" RUNTIME_API_TOKEN="$RUNTIME_TOKEN" \
    "$BIN/reference-runtime" >.stack/reference-runtime.log 2>&1 &
else
  RUNTIME_API_TOKEN="$RUNTIME_TOKEN" "$BIN/reference-runtime" >.stack/reference-runtime.log 2>&1 &
fi
track $!

cat <<MSG

The stack is up (logs in .stack/, Ctrl-C stops it):
  api               http://127.0.0.1:4000   (OpenAPI: /openapi.json)
  webhook-ingress   http://127.0.0.1:4001   (Twilio webhooks; health and metrics on :4011)
  automation-worker http://127.0.0.1:4002   (health and metrics)
  dispatch-worker   http://127.0.0.1:4003   (health and metrics)
  NATS              $NATS_URL   (deploy/nats/nats.conf; the runtime connects as
                    user "runtime" with password \$NATS_RUNTIME_PASSWORD)
  reference-runtime examples/runtime   (takes the tenant's calls; contract: /asyncapi.json)
  demo n8n          http://127.0.0.1:4005   (answers the demo agent's tool)

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
  echo "detached: stop it with  scripts/dev-down.sh"
  exit 0
fi
echo "Ctrl-C stops the stack."
wait
