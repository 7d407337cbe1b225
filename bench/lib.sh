# What the benchmark scripts share (sourced by bench/run.sh and
# bench/purge.sh from the repository's root): Postgres and NATS up, release
# binaries built (BIN), then template databases and their copies, the
# ingress and the dispatch-worker started on one of them, CPU accounting,
# loadgen's summary fields. Everything started or created is stopped or
# dropped on exit. PG_URL and NATS_URL override the local servers.

PG="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"

bash scripts/services.sh >/dev/null
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vcp-target}"
echo "building release binaries..."
cargo build --release --quiet -p webhook-ingress -p dispatch-worker -p bench
BIN="$CARGO_TARGET_DIR/release"
mkdir -p .stack

export TWILIO_AUTH_TOKEN="bench-auth-token"
export ENCRYPTION_KEY="ZGV2ZWxvcG1lbnQtb25seS1rZXktMzItYnl0ZXMhISE="
export RUST_LOG=warn LOG_FORMAT=json APP_ENV=development

pids=()
databases=()
stop_services() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_services
  for db in "${databases[@]}"; do
    psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT INT TERM

# A database in the state a mode names, used as the template of each
# measurement's copy, with HISTORY past calls ($2) and the tenant's
# concurrent-call limit ($3, empty for none). Prints the bench tenant's id.
make_template() {
  local db=$1 history=$2 limit=${3:-} tenant
  psql "$PG/postgres" -qAtc "CREATE DATABASE $db" >/dev/null
  for f in migrations/*.sql; do psql "$PG/$db" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done
  tenant=$(psql "$PG/$db" -qAt <<'SQL'
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
  if [ -n "$limit" ]; then
    psql "$PG/$db" -qAtc "UPDATE tenants SET max_concurrent_calls = $limit" >/dev/null
  fi
  if [ "$history" -gt 0 ]; then
    # Past calls as the pipeline leaves them: the session (completed), its
    # processed inbound event, its claimed dispatch.
    psql "$PG/$db" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
INSERT INTO call_sessions (id, tenant_id, call_sid, from_number, to_number, status, started_at, ended_at, duration_seconds)
SELECT gen_random_uuid(), '$tenant', 'CAhistory' || g, '+14155550100', '+15005550100', 'completed',
       now() - g * interval '20 seconds', now() - g * interval '20 seconds' + interval '90 seconds', 90
FROM generate_series(1, $history) g;
INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, needs_publish, published_at, processed_at)
SELECT gen_random_uuid(), tenant_id, id, 'call.inbound', call_sid, true, started_at, started_at FROM call_sessions;
INSERT INTO runtime_dispatches (id, tenant_id, call_id, status, expires_at, claimed_by, claimed_at)
SELECT gen_random_uuid(), tenant_id, id, 'claimed', started_at + interval '1 minute', 'runtime', started_at
FROM call_sessions;
SQL
    settle_kpi_rollups "$db" "  history: " >&2
    # Autovacuum, not this script, decides when the tables get statistics,
    # as in a running deployment: wait (bounded) until it has been by. A
    # server with autovacuum off (CI machines often are) leaves them without
    # any, as right after a restore.
    local analyzed
    if analyzed=$(await_autovacuum "$db" 180 last_autoanalyze call_sessions call_events runtime_dispatches); then
      echo "  history: autovacuum had analyzed $analyzed of its 3 tables" >&2
    else
      echo "  autovacuum is off on this server: the history has no statistics" >&2
    fi
  fi
  # A template takes no connections (autovacuum's included), so copies of it
  # can be made; the copies themselves are ordinary databases.
  psql "$PG/postgres" -qAtc "ALTER DATABASE $db WITH ALLOW_CONNECTIONS false" >/dev/null
  psql "$PG/postgres" -qAtc "CHECKPOINT" >/dev/null
  echo "$tenant"
}

# Computes database $1's KPI rollups until none is due, each output line
# prefixed by $2: a deployment holding past calls computed their hours'
# rollups as each hour ended, so a template holding them does too, rather
# than leave it to the worker in a measurement's first seconds.
settle_kpi_rollups() {
  "$BIN/retention-purge" --database-url "$PG/$1?sslmode=disable" --settle | sed "s/^/$2/"
}

# Waits, at most $2 seconds, until autovacuum has been by (column $3 of
# pg_stat_user_tables: last_autoanalyze or last_autovacuum) each table named
# after it in database $1; prints how many it had. Fails at once when
# autovacuum is off on the server.
await_autovacuum() {
  local db=$1 seconds=$2 column=$3 tables done=0
  shift 3
  [ "$(psql "$PG/$db" -qAtc "SHOW autovacuum")" = on ] || return 1
  tables=$(printf "'%s'," "$@")
  for _ in $(seq 1 $((seconds / 2))); do
    done=$(psql "$PG/$db" -qAtc "SELECT count(*) FROM pg_stat_user_tables
      WHERE relname IN (${tables%,}) AND $column IS NOT NULL")
    [ "$done" = "$#" ] && break
    sleep 2
  done
  echo "$done"
}

# A copy of template $1 named $2. Copied as files: Postgres 15 otherwise
# writes the whole copy to the WAL (a gigabyte for the grown database),
# which no deployment does before it takes calls.
copy_database() {
  local strategy=""
  databases+=("$2")
  [ "$(psql "$PG/postgres" -qAtc "SHOW server_version_num")" -ge 150000 ] && strategy="STRATEGY FILE_COPY"
  psql "$PG/postgres" -qAtc "CREATE DATABASE $2 TEMPLATE $1 $strategy" >/dev/null
  psql "$PG/postgres" -qAtc "CHECKPOINT" >/dev/null
}

# Starts the ingress and the dispatch-worker on database $1 and NATS prefix
# $2, and waits until both are ready.
start_services() {
  # Postgres is on this machine: TLS on loopback would only cost CPU.
  # Against a remote Postgres use sslmode=verify-full.
  local url="$PG/$1?sslmode=disable"
  DATABASE_URL="$url" NATS_URL="$NATS_URL" NATS_SUBJECT_PREFIX="$2" \
    LISTEN_ADDR=127.0.0.1:4101 OPS_LISTEN_ADDR=127.0.0.1:4111 \
    TWILIO_WEBHOOK_BASE_URL=http://127.0.0.1:4101 DATABASE_MAX_CONNECTIONS=16 \
    "$BIN/webhook-ingress" >".stack/bench-ingress.log" 2>&1 &
  pids+=($!)
  DATABASE_URL="$url" NATS_URL="$NATS_URL" NATS_SUBJECT_PREFIX="$2" \
    LISTEN_ADDR=127.0.0.1:4103 DATABASE_MAX_CONNECTIONS=32 \
    "$BIN/dispatch-worker" >".stack/bench-worker.log" 2>&1 &
  pids+=($!)
  if [ "${3:-}" ]; then
    # Tenant $3 has a limit: its calls end about a second after they ring,
    # each in a transaction of its own, as its end callback's would be (one
    # statement releasing hundreds would hold the tenant's counter locked
    # for all of them).
    # One session for the whole run: a psql process and a connection per
    # round would cost the machine more than the releases themselves. The
    # pid kept is psql's; the loop ends at its next write once psql is gone.
    psql "$url" -qAt >/dev/null 2>&1 < <(while sleep 0.2; do
        echo "DO \$\$ DECLARE v_id uuid; BEGIN
          FOR v_id IN SELECT id FROM call_sessions WHERE tenant_id = '$3' AND live
                      AND started_at < now() - interval '1 second' LOOP
            UPDATE call_sessions SET live = false, released_at = now(), release_reason = 'ended'
            WHERE id = v_id AND live;
            COMMIT;
          END LOOP; END \$\$;"
      done) &
    pids+=($!)
  fi
  for port in 4111 4103; do
    for _ in $(seq 1 60); do
      curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
      sleep 0.5
    done
    # Never measure a service that is not up.
    curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null \
      || { echo "service on :$port not ready; see .stack/bench-*.log" >&2; exit 1; }
  done
}

# CPU ticks since boot: all cores busy, idle or stolen, the idle ones, the
# stolen ones (time the hypervisor gave another guest: on a shared host the
# machine's own noise), then those of the ingress, the worker, every
# Postgres process and nats-server.
proc_ticks() { awk '{ t += $14 + $15 } END { print t + 0 }' "$@" 2>/dev/null || echo 0; }
cpu_ticks() {
  local total
  total=$(awk '/^cpu / { print $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $5 + $6, $9 }' /proc/stat)
  echo "$total $(proc_ticks "/proc/${pids[0]}/stat") $(proc_ticks "/proc/${pids[1]}/stat")" \
    "$(proc_ticks $(pgrep -x postgres | sed 's|.*|/proc/&/stat|'))" \
    "$(proc_ticks $(pgrep -x nats-server | sed 's|.*|/proc/&/stat|'))"
}
cpu_split() {
  paste <(echo "$1" | tr ' ' '\n') <(echo "$2" | tr ' ' '\n') | awk '
    NR == 1 { total = $2 - $1; next }
    { used[NR] = $2 - $1; rest -= used[NR] }
    END {
      split("idle stolen ingress dispatch-worker postgres nats-server", name, " ")
      printf "  CPU split (share of both cores):"
      for (i = 2; i <= 7; i++) printf " %s %.0f%%", name[i-1], 100 * used[i] / total
      printf ", loadgen and the rest %.0f%%\n", 100 * (total + rest) / total
    }'
}

# The share (%) named $2 in cpu_split's line $1.
share() { echo "$1" | sed -n "s/.* $2 \([0-9]*\)%.*/\1/p"; }

# The value of key $2 in loadgen's summary line $1.
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
