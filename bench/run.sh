#!/usr/bin/env bash
# The inbound-pipeline benchmark, one command: release builds, a fresh
# database, webhook-ingress + dispatch-worker with a unique NATS prefix, the
# load generator in closed loop (throughput) and open loop at a fixed rate
# (latency), then pgbench running the minimum SQL of one inbound call on the
# same machine for comparison. Everything it starts is stopped at the end.
#
#   bash bench/run.sh                    # defaults below
#   DURATION=20s RATE=1000 CONNECTIONS=64 bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-10s}"
RATE="${RATE:-1000}"
CONNECTIONS="${CONNECTIONS:-64}"
PG="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
RUN="bench$(date +%s)"
DB="vcp_$RUN"

bash scripts/services.sh >/dev/null
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
echo "building release binaries..."
cargo build --release --quiet -p webhook-ingress -p dispatch-worker -p bench
BIN="$CARGO_TARGET_DIR/release"

psql "$PG/postgres" -qAtc "CREATE DATABASE $DB" >/dev/null
for f in migrations/*.sql; do psql "$PG/$DB" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done
TENANT=$(psql "$PG/$DB" -qAt <<'SQL'
WITH t AS (INSERT INTO tenants (id, name) VALUES (gen_random_uuid(), 'bench') RETURNING id),
     a AS (INSERT INTO agents (id, tenant_id, name) SELECT gen_random_uuid(), id, 'bench' FROM t RETURNING id, tenant_id),
     v AS (INSERT INTO agent_versions (id, tenant_id, agent_id, version, config, status, published_at)
           SELECT gen_random_uuid(), tenant_id, id, 1, '{}', 'published', now() FROM a RETURNING id, agent_id),
     u AS (UPDATE agents SET active_version_id = v.id FROM v WHERE agents.id = v.agent_id RETURNING agents.id),
     n AS (INSERT INTO phone_numbers (id, tenant_id, e164, twilio_sid, agent_id)
           SELECT gen_random_uuid(), tenant_id, '+15005550100', 'PNbench', id FROM a RETURNING tenant_id)
SELECT tenant_id FROM n;
SQL
)
# A platform in use has history: 50,000 past calls with their events and
# dispatches, then ANALYZE, as autovacuum would have done. On empty tables
# the planner caches plans (foreign-key checks included) that pick the
# tenant-wide KPI index for single-row lookups and read the whole tenant per
# row once the table has grown; production tables are never empty.
psql "$PG/$DB" -q -v ON_ERROR_STOP=1 <<SQL >/dev/null
INSERT INTO call_sessions (id, tenant_id, call_sid, from_number, to_number, status, started_at)
SELECT gen_random_uuid(), '$TENANT', 'CAhistory' || g, '+14155550100', '+15005550100', 'completed',
       now() - g * interval '1 minute'
FROM generate_series(1, 50000) g;
INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, needs_publish, published_at, processed_at)
SELECT gen_random_uuid(), tenant_id, id, 'call.inbound', call_sid, true, started_at, started_at FROM call_sessions;
ANALYZE;
SQL
# The seeding's dirty pages are written out now, not by a checkpoint during
# the measurement.
psql "$PG/postgres" -qAtc "CHECKPOINT" >/dev/null

export TWILIO_AUTH_TOKEN="bench-auth-token"
export ENCRYPTION_KEY="ZGV2ZWxvcG1lbnQtb25seS1rZXktMzItYnl0ZXMhISE="
# Postgres is on this machine: TLS on loopback would only cost CPU (a fifth
# to a quarter of the throughput here). Against a remote Postgres use
# sslmode=verify-full.
export NATS_URL NATS_SUBJECT_PREFIX="$RUN" DATABASE_URL="$PG/$DB?sslmode=disable" RUST_LOG=warn LOG_FORMAT=json
mkdir -p .stack
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
LISTEN_ADDR=127.0.0.1:4101 TWILIO_WEBHOOK_BASE_URL=http://127.0.0.1:4101 DATABASE_MAX_CONNECTIONS=16 \
  "$BIN/webhook-ingress" >.stack/bench-ingress.log 2>&1 &
pids+=($!)
LISTEN_ADDR=127.0.0.1:4103 DATABASE_MAX_CONNECTIONS=32 "$BIN/dispatch-worker" >.stack/bench-worker.log 2>&1 &
pids+=($!)
for port in 4101 4103; do
  for _ in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
    sleep 0.5
  done
  # Never measure a service that is not up.
  curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null || { echo "service on :$port not ready; see .stack/bench-*.log" >&2; exit 1; }
done

# CPU ticks since boot: all cores busy or idle, the idle ones, then those of
# the ingress, the worker, every Postgres process and nats-server. Sampled
# around the saturation run.
proc_ticks() { awk '{ t += $14 + $15 } END { print t + 0 }' "$@" 2>/dev/null || echo 0; }
cpu_ticks() {
  local total
  total=$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  echo "$total $(proc_ticks "/proc/${pids[0]}/stat") $(proc_ticks "/proc/${pids[1]}/stat")" \
    "$(proc_ticks $(pgrep -x postgres | sed 's|.*|/proc/&/stat|'))" \
    "$(proc_ticks $(pgrep -x nats-server | sed 's|.*|/proc/&/stat|'))"
}

LOADGEN=("$BIN/loadgen" --ingress http://127.0.0.1:4101 --to +15005550100
  --nats-url "$NATS_URL" --nats-subject-prefix "$RUN" --duration "$DURATION")
# Latency first, on a settled system: measured after the saturation run it
# would also measure that run's aftermath (the dispatch backlog, autovacuum
# of the rows just written, dirty buffers).
echo
echo "== fixed arrival rate (open loop) =="
"${LOADGEN[@]}" --mode open --rate "$RATE"
# The same requests as the ingress timed them (handler only, no client or
# network), to tell server time from the load generator's own.
# ingress_store_seconds: waiting for a writer plus the commit;
# ingress_group_commit_seconds: the commit statement alone.
curl -fsS http://127.0.0.1:4101/metrics \
  | grep -E '^(http_request_duration_seconds_bucket.*inbound|ingress_store_seconds_bucket|ingress_group_commit_seconds_bucket)' \
  | sed 's/^/  ingress-side: /' || true
echo
echo "== saturation (closed loop) =="
cpu_before=$(cpu_ticks)
"${LOADGEN[@]}" --mode closed --connections "$CONNECTIONS" --delete-streams
cpu_after=$(cpu_ticks)
# Where the 2 cores went during that run (warm-up and stream clean-up
# included): what the throughput is bounded by.
paste <(echo "$cpu_before" | tr ' ' '\n') <(echo "$cpu_after" | tr ' ' '\n') | awk '
  NR == 1 { total = $2 - $1; next }
  { used[NR] = $2 - $1; rest -= used[NR] }
  END {
    split("idle ingress dispatch-worker postgres nats-server", name, " ")
    printf "  CPU split (share of both cores):"
    for (i = 2; i <= 6; i++) printf " %s %.0f%%", name[i-1], 100 * used[i] / total
    printf ", loadgen and the rest %.0f%%\n", 100 * (total + rest) / total
  }'

echo
echo "== pgbench: the minimum SQL of one inbound call (session upsert + outbox insert, one commit) =="
cat >".stack/bench-inbound.sql" <<SQL
\set n random(1, 2000000000)
WITH s AS (
  INSERT INTO call_sessions (id, tenant_id, call_sid, from_number, to_number)
  VALUES (gen_random_uuid(), '$TENANT', 'PB' || :client_id || '_' || :n, '+14155550100', '+15005550100')
  ON CONFLICT (call_sid) DO UPDATE SET updated_at = now()
  RETURNING id, tenant_id
)
INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, needs_publish)
SELECT gen_random_uuid(), s.tenant_id, s.id, 'call.inbound', 'PB' || :client_id || '_' || :n, '{}', true FROM s
ON CONFLICT (call_id, idempotency_key) DO NOTHING;
SQL
for clients in 1 "$CONNECTIONS"; do
  tps=$(pgbench -n -M prepared -c "$clients" -j 2 -T "${DURATION%s}" -f .stack/bench-inbound.sql "$PG/$DB" 2>/dev/null \
    | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  echo "  pgbench clients=$clients: $tps inbound calls/s (one commit each)"
done
