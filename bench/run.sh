#!/usr/bin/env bash
# The inbound-pipeline benchmark, one command. Release builds, then for each
# database state (MODES):
#   empty    a freshly migrated database: no history, no statistics, what
#            every new deployment starts from;
#   limited  the same, with a concurrent-call limit on the tenant (LIMIT,
#            never reached) so every call goes through admission, and calls
#            that end about a second after they ring (a loop releases them
#            one transaction each, as their end callbacks would), so live
#            calls stay as few as a real tenant's;
#   history  the same with HISTORY past calls (default 1,000,000, with their
#            events and dispatches), left to autovacuum as a running
#            deployment would be (no manual ANALYZE).
# Each measurement gets its own copy of that database and a fresh NATS
# prefix, and measures from the first webhook (no warm-up): the fixed
# arrival rate (latency), the saturation run (throughput per 5-second
# window, so a decline as the tables grow shows), and pgbench running the
# minimum SQL of one inbound call at the fixed rate and at saturation (the
# machine's limits, same run). A table of the states side by side ends
# the run. Everything it starts is stopped.
#
#   bash bench/run.sh                              # every state
#   MODES=empty bash bench/run.sh                  # the empty database only
#   HISTORY=50000 RATE=1000 SATURATION=30s bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

MODES="${MODES:-empty limited history}"
HISTORY="${HISTORY:-1000000}"
LIMIT="${LIMIT:-100000}"
RATE="${RATE:-1000}"
FIXED="${FIXED:-20s}"
SATURATION="${SATURATION:-30s}"
CONNECTIONS="${CONNECTIONS:-64}"
RUN="bench$(date +%s)"

# shellcheck source=bench/lib.sh
source bench/lib.sh

declare -A result
for mode in $MODES; do
  history=0
  [ "$mode" = history ] && history="$HISTORY"
  echo
  echo "######## database: $mode$([ "$history" -gt 0 ] && echo " ($history past calls)") ########"
  template="vcp_${RUN}_${mode}"
  # Called in a subshell (for its output): the parent records the name.
  databases+=("$template")
  limit=""
  [ "$mode" = limited ] && limit="$LIMIT"
  tenant=$(make_template "$template" "$history" "$limit")
  # With a limit, the tenant's calls end as they would (see start_services).
  ends=""
  [ -n "$limit" ] && ends="$tenant"

  echo
  echo "== fixed arrival rate $RATE/s for $FIXED (open loop), from the first webhook =="
  copy_database "$template" "${template}_fixed"
  start_services "${template}_fixed" "${RUN}${mode}f" "$ends"
  cpu_before=$(cpu_ticks)
  out=$("$BIN/loadgen" --ingress http://127.0.0.1:4101 --to +15005550100 --nats-url "$NATS_URL" \
    --nats-subject-prefix "${RUN}${mode}f" --mode open --rate "$RATE" --duration "$FIXED" \
    --warmup 0s --delete-streams)
  cpu_after=$(cpu_ticks)
  echo "$out" | grep -v '^summary:'
  fixed=$(echo "$out" | grep '^summary:')
  fixed_cpu=$(cpu_split "$cpu_before" "$cpu_after")
  echo "$fixed_cpu"
  # The same requests as the ingress timed them (handler only).
  curl -fsS http://127.0.0.1:4111/metrics \
    | grep -E '^(http_request_duration_seconds_bucket.*inbound|ingress_store_seconds_bucket|ingress_group_commit_seconds_bucket)' \
    | sed 's/^/  ingress-side: /' || true
  stop_services

  echo
  echo "== saturation, $CONNECTIONS connections for $SATURATION (closed loop), from the first webhook =="
  copy_database "$template" "${template}_sat"
  start_services "${template}_sat" "${RUN}${mode}s" "$ends"
  cpu_before=$(cpu_ticks)
  out=$("$BIN/loadgen" --ingress http://127.0.0.1:4101 --to +15005550100 --nats-url "$NATS_URL" \
    --nats-subject-prefix "${RUN}${mode}s" --mode closed --connections "$CONNECTIONS" \
    --duration "$SATURATION" --warmup 0s --delete-streams)
  cpu_after=$(cpu_ticks)
  echo "$out" | grep -v '^summary:'
  saturated=$(echo "$out" | grep '^summary:')
  saturated_cpu=$(cpu_split "$cpu_before" "$cpu_after")
  echo "$saturated_cpu"
  stop_services

  echo
  echo "== pgbench: the minimum SQL of one inbound call (session upsert + outbox insert, one commit) =="
  cat >".stack/bench-inbound.sql" <<SQL
\set n random(1, 2000000000)
WITH s AS (
  INSERT INTO call_sessions (id, tenant_id, call_sid, from_number, to_number)
  VALUES (gen_random_uuid(), '$tenant', 'PB' || :client_id || '_' || :n, '+14155550100', '+15005550100')
  ON CONFLICT (call_sid) DO UPDATE SET updated_at = now()
  RETURNING id, tenant_id
)
INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, needs_publish)
SELECT gen_random_uuid(), s.tenant_id, s.id, 'call.inbound', 'PB' || :client_id || '_' || :n, '{}', true FROM s
ON CONFLICT (call_id, idempotency_key) DO NOTHING;
SQL
  # At the fixed rate: the latency of that SQL alone, timed from each
  # transaction's scheduled start as loadgen times webhooks. The floor
  # under the pipeline's TwiML latency on this machine, in this run.
  copy_database "$template" "${template}_pgfixed"
  rm -f .stack/pgbench-fixed.*
  pgbench -n -M prepared -c "$CONNECTIONS" -j 2 -R "$RATE" -T "${FIXED%s}" -l --log-prefix=.stack/pgbench-fixed \
    -f .stack/bench-inbound.sql "$PG/${template}_pgfixed" >/dev/null 2>&1
  read -r pgbench_p50 pgbench_p99 < <(cat .stack/pgbench-fixed.* | awk '{ print $3 / 1000 }' | sort -n \
    | awk '{ v[NR] = $1 } END { if (NR) printf "%.2f %.2f\n", v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1]; else print "- -" }')
  echo "  pgbench at $RATE/s for $FIXED, $CONNECTIONS clients: latency p50 $pgbench_p50 ms, p99 $pgbench_p99 ms"
  copy_database "$template" "${template}_pgbench"
  pgbench_tps=$(pgbench -n -M prepared -c "$CONNECTIONS" -j 2 -T "${SATURATION%s}" -f .stack/bench-inbound.sql \
    "$PG/${template}_pgbench" 2>/dev/null | sed -n 's/^tps = \([0-9]*\).*/\1/p')
  echo "  pgbench clients=$CONNECTIONS: $pgbench_tps inbound calls/s (one commit each)"

  result[$mode]="$(field "$saturated" rate) $pgbench_tps $(field "$saturated" worst_window_ratio) $(field "$fixed" twiml_p99) $(field "$fixed" handoff_p99) $(field "$fixed" accepted)/$(field "$fixed" handoffs) $(field "$saturated" accepted)/$(field "$saturated" handoffs) $pgbench_p99 $(share "$fixed_cpu" idle)/$(share "$fixed_cpu" stolen) $(share "$saturated_cpu" stolen)"
done

echo
echo "######## side by side (targets: saturation >= 0.8 x pgbench; worst 5-s window >= 0.85 x best;"
echo "######## at $RATE/s TwiML p99 < 10 ms, handoff p99 < 25 ms; accepted = handed off) ########"
printf '%-34s' ""
for mode in $MODES; do printf '%22s' "$mode"; done
echo
row() {
  local label=$1 index=$2
  printf '%-34s' "$label"
  for mode in $MODES; do
    read -r -a r <<<"${result[$mode]}"
    printf '%22s' "${r[$index]}"
  done
  echo
}
row "saturation webhooks/s" 0
row "pgbench, same SQL minimum, /s" 1
printf '%-34s' "saturation / pgbench"
for mode in $MODES; do
  read -r -a r <<<"${result[$mode]}"
  printf '%22s' "$(awk -v a="${r[0]}" -v b="${r[1]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
done
echo
row "worst 5-s window / best" 2
row "fixed rate: TwiML p99 ms" 3
row "pgbench at that rate: p99 ms" 7
row "fixed rate: handoff p99 ms" 4
row "fixed rate: accepted/handed off" 5
row "saturation: accepted/handed off" 6
row "fixed rate: CPU idle/stolen %" 8
row "saturation: CPU stolen %" 9
