#!/usr/bin/env bash
# Runs schemathesis (from PyPI) against the api's own /openapi.json with a
# valid internal token: no 5xx, responses must match the document.
# Uses its own database and NATS subject prefix; stops the api afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
# schemathesis lives in a virtualenv of its own, outside the clone.
venv="$HOME/.cache/vcp-schemathesis"
if ! "$venv/bin/python" -c "import schemathesis" 2>/dev/null; then
  if ! python3 -m venv "$venv" 2>/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check schemathesis
fi
cargo build -p api --bin api --quiet

db="vcp_schemathesis_$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export NATS_SUBJECT_PREFIX="st$$"
# Development: the dev token route and the development secret and key.
export APP_ENV=development
export DEV_BOOTSTRAP_KEY=schemathesis-dev-key AUTH_BOOTSTRAP_KEY=schemathesis-auth-key
export LISTEN_ADDR="127.0.0.1:$port" RUST_LOG=warn
"$CARGO_TARGET_DIR/debug/api" >"/tmp/schemathesis-api-$$.log" 2>&1 &
api_pid=$!
cleanup() {
  kill "$api_pid" 2>/dev/null || true
  wait "$api_pid" 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
  curl -fsS "$base/health/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
resp=$(curl -sS -X POST "$base/auth/register-first-admin" -H 'content-type: application/json' \
  -d '{"email":"st@example.com","password":"schemathesis-password","tenant_name":"Schemathesis"}')
token=$(echo "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# not_a_server_error: no 5xx; response_schema_conformance and
# status_code_conformance: answers are the documented ones.
"$venv/bin/python" -m schemathesis.cli run "$base/openapi.json" \
  -H "Authorization: Bearer $token" \
  -H "x-dev-bootstrap-key: $DEV_BOOTSTRAP_KEY" \
  -H "x-auth-bootstrap-key: $AUTH_BOOTSTRAP_KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-25}" \
  --seed 1 \
  --request-timeout 10 \
  --exclude-path /auth/register-first-admin \
  "$@"
