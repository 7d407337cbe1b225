//! The plan guard for the call flow: on a freshly migrated, empty database,
//! with the generic plans a pooled connection keeps, every read that the
//! ingress, the dispatch-worker and the api's claim make of a per-call
//! table (their statements, the foreign-key checks inside them) pins one
//! row through a unique key. A plan that scans a tenant or a whole table
//! here is the plan a new deployment keeps while its tables grow.
//! See `shared::testing::plans` and docs/decisions/0037-plan-stable-keys.md.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use chrono::Utc;
use shared::calls::RuntimeEvent;
use shared::testing::plans;
use sqlx::PgPool;
use uuid::Uuid;

use super::claim::spawn_api;
use super::world::*;

/// Read on purpose through non-unique indexes, with ranges bounded by the
/// backlog, not by the tables' size: the relay's and the expiry job's.
const BOUNDED: &[&str] = &[
    "call_events_unpublished_idx",
    "call_events_unprocessed_idx",
    "runtime_dispatches_pending_idx",
    // Admission's count of a tenant's (or agent's) live calls, the sweep
    // and the gauges: bounded by the calls in progress.
    "call_sessions_live_idx",
    // `call.transcript_ready` counts the call's segments: bounded by one call.
    "transcript_segments_call_idx",
];

/// The test's own checks go through `pool`, and their plans are not
/// logged: a connection the pool opens after the capture began loads
/// auto_explain too, and these counts must not be taken for the flow's
/// reads.
async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    let mut conn = pool.acquire().await.expect("a connection");
    sqlx::query("SET auto_explain.log_min_duration = -1")
        .execute(&mut *conn)
        .await
        .expect("no plan logging for the test's own checks");
    sqlx::query_scalar(sql)
        .fetch_one(&mut *conn)
        .await
        .expect("count")
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn every_per_call_read_of_the_call_flow_pins_one_row(pool: PgPool) {
    let _alone = plans::exclusive().await;
    let seeded = seed_number(&pool, "+14155550900").await;
    // Limits on the tenant and its agent, so admission counts live calls.
    sqlx::query("UPDATE tenants SET max_concurrent_calls = 100 WHERE id = $1")
        .bind(seeded.tenant_id)
        .execute(&pool)
        .await
        .expect("tenant limit");
    sqlx::query("UPDATE agents SET max_concurrent_calls = 100 WHERE id = $1")
        .bind(seeded.agent_id)
        .execute(&pool)
        .await
        .expect("agent limit");
    // An event webhook endpoint on every event, so each call also runs the
    // triggers that record them (no worker delivers them here).
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, event_types, secret_ciphertext, secret_nonce, secret_key_id)
         VALUES (gen_random_uuid(), $1, 'https://hooks.example.com/', $2, '\\x00', '\\x00', 'k')",
    )
    .bind(seeded.tenant_id)
    .bind(shared::webhooks::EVENT_TYPES)
    .execute(&pool)
    .await
    .expect("endpoint");
    // The flow's connections plan generically and log their plans.
    let app_pool = plans::capture_plans(&pool).await;
    let w = world(app_pool.clone()).await;
    w.spawn_worker(|_| {}).await;
    let (api, bearer) = spawn_api(app_pool.clone(), &w.prefix, seeded.tenant_id).await;

    // More calls than the five custom plans Postgres tries before it keeps
    // a generic one (forced here anyway), with a status and a recording
    // callback each for some.
    let sids: Vec<String> = (0..8).map(|n| format!("CA{n:032}")).collect();
    for sid in &sids {
        assert_eq!(
            w.post_signed(
                "/twilio/webhook/inbound",
                &inbound_params(sid, &seeded.e164)
            )
            .await
            .0,
            200
        );
    }
    for sid in &sids[..4] {
        let status = params(&[
            ("CallSid", sid),
            ("CallStatus", "completed"),
            ("CallDuration", "12"),
            ("To", &seeded.e164),
        ]);
        assert_eq!(
            w.post_signed("/twilio/webhook/status", &status).await.0,
            200
        );
        let recording = params(&[
            ("CallSid", sid),
            ("RecordingSid", &format!("RE{}", &sid[2..])),
            ("RecordingStatus", "completed"),
            ("RecordingDuration", "12"),
        ]);
        assert_eq!(
            w.post_signed("/twilio/webhook/recording", &recording)
                .await
                .0,
            200
        );
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&pool, "SELECT count(*) FROM runtime_dispatches").await == 8
                && count(&pool, "SELECT count(*) FROM recordings").await == 4
                && count(
                    &pool,
                    "SELECT count(*) FROM call_sessions WHERE status = 'completed'",
                )
                .await
                    == 4
        })
        .await,
        "the calls were dispatched and their callbacks applied"
    );

    // The runtime claims a dispatch and sends a transcript and the end.
    let (dispatch_id, call_id): (Uuid, Uuid) =
        sqlx::query_as("SELECT id, call_id FROM runtime_dispatches ORDER BY created_at LIMIT 1")
            .fetch_one(&pool)
            .await
            .expect("a dispatch");
    let claim = w
        .client
        .post(format!("{api}/internal/runtime/dispatches/claim"))
        .bearer_auth(&bearer)
        .json(&serde_json::json!({"dispatch_id": dispatch_id}))
        .send()
        .await
        .expect("claim");
    assert_eq!(claim.status().as_u16(), 200);
    let js = async_nats::jetstream::new(w.nats.clone());
    let segment = RuntimeEvent {
        event_id: Uuid::now_v7(),
        kind: "transcript.segment".into(),
        call_id,
        tenant_id: seeded.tenant_id,
        occurred_at: Utc::now(),
        data: serde_json::json!({"speaker": "caller", "text": "hello", "start_ms": 0, "end_ms": 900}),
    };
    let ended = RuntimeEvent {
        event_id: Uuid::now_v7(),
        kind: "call.ended".into(),
        data: serde_json::json!({"reason": "caller hung up"}),
        ..segment.clone()
    };
    for event in [&segment, &ended] {
        js.send_publish(
            w.subjects.runtime_events(seeded.tenant_id, call_id),
            PublishMessage::build()
                .payload(serde_json::to_vec(event).expect("json").into())
                .message_id(event.event_id.to_string()),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&pool, "SELECT count(*) FROM transcript_segments").await == 1
                && count(
                    &pool,
                    "SELECT count(*) FROM call_sessions WHERE ended_at IS NOT NULL",
                )
                .await
                    >= 1
        })
        .await,
        "the runtime's events were stored"
    );

    // A dispatch expires and its call is released; the safety net sweeps.
    let mut quiet = pool.acquire().await.expect("a connection");
    sqlx::query("SET auto_explain.log_min_duration = -1")
        .execute(&mut *quiet)
        .await
        .expect("no plan logging for the test's own statement");
    sqlx::query("UPDATE runtime_dispatches SET expires_at = now() WHERE call_id <> $1")
        .bind(call_id)
        .execute(&mut *quiet)
        .await
        .expect("make dispatches due");
    drop(quiet);
    dispatch_worker::expiry::expire_once(&app_pool)
        .await
        .expect("expiry");
    // The worker's own loop may have expired some of them first.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM runtime_dispatches WHERE status = 'expired'"
        )
        .await,
        7
    );
    dispatch_worker::expiry::release_overdue_once(&app_pool, Duration::from_secs(3600))
        .await
        .expect("sweep");

    // Every kind of event the flow makes was recorded for the endpoint.
    assert_eq!(
        count(
            &pool,
            "SELECT count(DISTINCT event_type) FROM webhook_messages"
        )
        .await,
        6,
        "call.started, answered, ended, recording_ready, transcript_ready, dispatch_expired"
    );

    let captured = plans::captured();
    // The capture saw the flow: the foreign-key check of a new event and
    // the dispatch of an inbound one.
    assert!(
        !captured
            .reads_of("call_sessions", "FOR KEY SHARE")
            .is_empty(),
        "no foreign-key check captured: {} reads",
        captured.reads.len()
    );
    assert!(
        !captured
            .reads_of(
                "call_events",
                "e.type = 'call.inbound' AND e.processed_at IS NULL"
            )
            .is_empty()
    );
    captured
        .assert_per_call_reads_pin_one_row(&pool, BOUNDED)
        .await;
    w.delete_streams().await;
}

/// What a row trigger costs before it does anything: a function called in a
/// trigger's `WHEN` is inlined, its body parsed again for every statement,
/// and an SQL function that reads a table (never inlined) is parsed and
/// planned on every call, where PL/pgSQL plans once per connection
/// (migrations/0023_per_row_trigger_costs.sql).
#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn row_triggers_parse_and_plan_nothing_per_call(pool: PgPool) {
    let called_in_when: Vec<String> = sqlx::query_scalar(
        "SELECT t.tgrelid::regclass || '.' || t.tgname || ' calls ' || p.proname
         FROM pg_trigger t
         JOIN pg_depend d ON d.classid = 'pg_trigger'::regclass AND d.objid = t.oid
                         AND d.refclassid = 'pg_proc'::regclass AND d.refobjid <> t.tgfoid
         JOIN pg_proc p ON p.oid = d.refobjid
         WHERE NOT t.tgisinternal AND p.pronamespace = 'public'::regnamespace",
    )
    .fetch_all(&pool)
    .await
    .expect("trigger dependencies");
    assert!(
        called_in_when.is_empty(),
        "write the expression in the WHEN: {called_in_when:?}"
    );
    // The SQL functions left are expressions, inlined where they are used.
    let sql_functions: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'public'::regnamespace AND l.lanname = 'sql' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("sql functions");
    assert_eq!(
        sql_functions,
        [
            "kpi_compaction_cutoff",
            "kpi_hour_needs_mark",
            "webhook_call_data"
        ],
        "a new SQL-language function that reads a table is parsed and planned on every call: write it in PL/pgSQL"
    );
    // The KPI triggers' WHEN clauses restate `kpi_hour_needs_mark`'s rule
    // for each timestamp they test: the two must not drift apart.
    let rule: String = sqlx::query_scalar(
        r"SELECT btrim(regexp_replace(prosrc, '\s+', ' ', 'g')) FROM pg_proc
          WHERE proname = 'kpi_hour_needs_mark'",
    )
    .fetch_one(&pool)
    .await
    .expect("rule");
    assert_eq!(
        rule,
        "SELECT date_trunc('hour', p_at, 'UTC') + interval '1 hour' <= clock_timestamp() + interval '1 minute'"
    );
    let triggers: Vec<(String, String)> = sqlx::query_as(
        "SELECT tgname::text, pg_get_triggerdef(oid) FROM pg_trigger
         WHERE tgname IN ('call_sessions_kpi_insert', 'call_sessions_kpi_update',
                          'tool_executions_kpi_insert', 'tool_executions_kpi_update')",
    )
    .fetch_all(&pool)
    .await
    .expect("kpi triggers");
    assert_eq!(triggers.len(), 4);
    for (name, definition) in triggers {
        let column = if name.starts_with("call_sessions") {
            "started_at"
        } else {
            "created_at"
        };
        let rows: &[&str] = if name.ends_with("update") {
            &["old", "new"]
        } else {
            &["new"]
        };
        for row in rows {
            let restated = format!(
                "(date_trunc('hour'::text, {row}.{column}, 'UTC'::text) + '01:00:00'::interval) \
                 <= (clock_timestamp() + '00:01:00'::interval)"
            );
            assert!(
                definition.contains(&restated),
                "{name} must restate kpi_hour_needs_mark for {row}.{column}: {definition}"
            );
        }
    }
}
