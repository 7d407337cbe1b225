#!/usr/bin/env bash
# The retention purge under inbound load, one command. Release builds, then:
#   1. a freshly migrated database whose tenant has EXPIRED calls (default
#      1,000,000) past its 30-day retention, each with its events (inbound
#      and status) and a two-segment transcript, their hours' KPI rollups
#      computed (as the running worker would have), autovacuum waited for;
#   2. inbound webhooks at RATE/s (default 500) for DURATION with no purge:
#      the TwiML p99 without it;
#   3. on a fresh copy, the same load while one purge runs
#      (`retention-purge`: the function the dispatch-worker runs, its batch
#      size): the TwiML p99 with it, and the purge's rows/s;
#   4. the machine's limit beside it: the same rows deleted by one bare
#      DELETE (no batches, no hold checks, no audit) on a third copy.
# Target: the p99 with the purge at most 1.5 x the p99 without.
#
#   bash bench/purge.sh
#   EXPIRED=200000 DURATION=30s bash bench/purge.sh
#   BATCH=500 DUTY=1 bash bench/purge.sh      # the purge at full speed
set -euo pipefail
cd "$(dirname "$0")/.."

EXPIRED="${EXPIRED:-1000000}"
RATE="${RATE:-500}"
DURATION="${DURATION:-60s}"
RUN="purge$(date +%s)"

# shellcheck source=bench/lib.sh
source bench/lib.sh

template="vcp_${RUN}"
databases+=("$template")
echo "loading $EXPIRED expired calls..."
loaded_at=$(date +%s)
tenant=$(make_template "$template" 0)
psql "$PG/postgres" -qAtc "ALTER DATABASE $template WITH ALLOW_CONNECTIONS true" >/dev/null
# Calls 31 to 91 days old, ended, with what the pipeline and the runtime
# leave: the inbound and a status event, two transcript segments.
psql "$PG/$template" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
INSERT INTO call_sessions (id, tenant_id, call_sid, from_number, to_number, status, started_at, ended_at, duration_seconds)
SELECT gen_random_uuid(), '$tenant', 'CAexpired' || g, '+14155550100', '+15005550100', 'completed',
       now() - interval '31 days' - g * (interval '60 days' / $EXPIRED),
       now() - interval '31 days' - g * (interval '60 days' / $EXPIRED) + interval '90 seconds', 90
FROM generate_series(1, $EXPIRED) g;
INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, needs_publish, published_at, processed_at, occurred_at)
SELECT gen_random_uuid(), tenant_id, id, k.type, call_sid || k.type, true, started_at, started_at, started_at
FROM call_sessions, (VALUES ('call.inbound'), ('call.status')) k(type);
INSERT INTO transcript_segments (id, tenant_id, call_id, speaker, text, start_ms, end_ms, occurred_at)
SELECT gen_random_uuid(), tenant_id, id, s.speaker, s.text, s.start_ms, s.start_ms + 2000, started_at
FROM call_sessions,
     (VALUES ('agent', 'Hello, how can I help?', 0), ('caller', 'I would like to book a table.', 2500))
       s(speaker, text, start_ms);
SQL
echo "  loaded in $(($(date +%s) - loaded_at)) s"
# A deployment holding month-old calls computed their hours' KPI rollups
# as each hour ended, and autovacuum has long been by: the loading
# script's marks are consumed the same way, and autovacuum waited for
# (bounded), rather than left to land in a measurement.
settle_kpi_rollups "$template" "  "
if vacuumed=$(await_autovacuum "$template" 240 last_autovacuum \
  call_sessions call_events transcript_segments kpi_dirty_hours); then
  echo "  autovacuum had been by $vacuumed of the 4 big tables"
else
  echo "  autovacuum is off on this server"
fi
psql "$PG/postgres" -qAtc "ALTER DATABASE $template WITH ALLOW_CONNECTIONS false" >/dev/null
psql "$PG/postgres" -qAtc "CHECKPOINT" >/dev/null

# loadgen at RATE/s for DURATION on NATS prefix $1; prints its summary.
inbound_load() {
  "$BIN/loadgen" --ingress http://127.0.0.1:4101 --to +15005550100 --nats-url "$NATS_URL" \
    --nats-subject-prefix "$1" --mode open --rate "$RATE" --duration "$DURATION" \
    --warmup 0s --delete-streams | grep '^summary:'
}

echo
echo "== inbound $RATE/s for $DURATION, no purge =="
copy_database "$template" "${template}_quiet"
start_services "${template}_quiet" "${RUN}q"
quiet=$(inbound_load "${RUN}q")
echo "  $quiet"
stop_services

echo
echo "== inbound $RATE/s for $DURATION while one purge runs (batch ${BATCH:-default}, duty ${DUTY:-default}) =="
copy_database "$template" "${template}_purge"
start_services "${template}_purge" "${RUN}p"
# The tenant keeps 30 days from now on. The worker's own purge ran at its
# start, before that, and its next is RETENTION_PURGE_INTERVAL (1 h) away:
# the measured run is the only one.
psql "$PG/${template}_purge" -qAtc "UPDATE tenants SET retention_days = 30" >/dev/null
# BATCH and DUTY, when set, override the worker's defaults.
"$BIN/retention-purge" --database-url "$PG/${template}_purge?sslmode=disable" \
  ${BATCH:+--batch "$BATCH"} ${DUTY:+--duty "$DUTY"} \
  >".stack/bench-purge.out" 2>&1 &
purge_pid=$!
busy=$(inbound_load "${RUN}p")
echo "  $busy"
purge_running=yes
kill -0 "$purge_pid" 2>/dev/null || purge_running=no
wait "$purge_pid" || { cat .stack/bench-purge.out >&2; exit 1; }
purge=$(grep '^purge:' .stack/bench-purge.out)
echo "  $purge"
[ "$purge_running" = yes ] || echo "  (the purge ended before the load did: part of the window ran without it)"
left=$(psql "$PG/${template}_purge" -qAtc "SELECT count(*) FROM call_sessions WHERE started_at < now() - interval '30 days'")
echo "  expired calls left: $left"
stop_services

echo
echo "== the machine's limit: the same rows in one bare DELETE =="
copy_database "$template" "${template}_bare"
bare_start=$(date +%s.%N)
psql "$PG/${template}_bare" -qAtc "DELETE FROM call_sessions WHERE started_at < now() - interval '30 days'" >/dev/null
bare_seconds=$(awk -v a="$bare_start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')

rows=$(field "$purge" rows)
quiet_p99=$(field "$quiet" twiml_p99)
busy_p99=$(field "$busy" twiml_p99)
echo
echo "######## retention purge of $EXPIRED expired calls ($rows rows) under $RATE/s inbound ########"
printf "  purge:       %s rows/s (%s calls/s, %s s)\n" "$(field "$purge" rows_per_s)" \
  "$(field "$purge" calls_per_s)" "$(field "$purge" seconds)"
printf "  bare DELETE: %.0f rows/s (%.1f s, one statement, no load)\n" \
  "$(awk -v r="$rows" -v s="$bare_seconds" 'BEGIN { print r / s }')" "$bare_seconds"
printf "  TwiML p99:   %s ms without the purge, %s ms with it: %.2f x (target <= 1.5)\n" \
  "$quiet_p99" "$busy_p99" "$(awk -v a="$busy_p99" -v b="$quiet_p99" 'BEGIN { print a / b }')"
