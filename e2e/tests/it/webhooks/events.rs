//! Which changes record which events: each trigger of
//! `migrations/0019_webhook_endpoints.sql`, driven by the same statements
//! the writers run, records its event once, in the change's transaction;
//! a change rolled back leaves none, and a tenant without a subscribed
//! endpoint gets none.

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{app, endpoint};
use api::testing::fixtures::seed;

/// The messages recorded for the tenant, oldest first: (type, data).
async fn messages(pool: &PgPool, tenant: Uuid) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT event_type, data FROM webhook_messages WHERE tenant_id = $1 ORDER BY created_at, event_type",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
    .expect("messages")
}

async fn exec(pool: &PgPool, sql: &str, id: Uuid) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn each_change_records_its_event_once(pool: PgPool) {
    let app = app(pool).await;
    let s = seed(&app.pool).await;
    let all = shared::webhooks::EVENT_TYPES;
    endpoint(&app, s.tenant_id, "https://hooks.example.com/all", all).await;
    let pool = &app.pool;
    let call = s.call_id;

    // call.started: the dispatch-worker takes the inbound call.
    exec(
        pool,
        "INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, needs_publish)
         SELECT gen_random_uuid(), tenant_id, id, 'call.inbound', 'inbound', true FROM call_sessions WHERE id = $1",
        call,
    )
    .await;
    assert!(
        messages(pool, s.tenant_id).await.is_empty(),
        "not on the ingress's insert"
    );
    exec(
        pool,
        "UPDATE call_events SET processed_at = now() WHERE call_id = $1 AND type = 'call.inbound'",
        call,
    )
    .await;
    exec(
        pool,
        "UPDATE call_events SET processed_at = now() WHERE call_id = $1",
        call,
    )
    .await;
    let recorded = messages(pool, s.tenant_id).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, "call.started");
    assert_eq!(recorded[0].1["call_sid"], format!("CA{}", call.simple()));
    assert_eq!(recorded[0].1["from"], "+15550001111");
    assert_eq!(recorded[0].1["agent_version_id"], s.version_id.to_string());

    // One callback that answers and ends: call.answered, then call.ended;
    // a later callback changes nothing.
    exec(
        pool,
        "UPDATE call_sessions SET status = 'completed', answered_at = started_at + interval '5 seconds',
                ended_at = started_at + interval '65 seconds', duration_seconds = 58 WHERE id = $1",
        call,
    )
    .await;
    exec(
        pool,
        "UPDATE call_sessions SET updated_at = now() WHERE id = $1",
        call,
    )
    .await;
    let recorded = messages(pool, s.tenant_id).await;
    let types: Vec<&str> = recorded.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["call.started", "call.answered", "call.ended"]);
    let ended = &recorded[2].1;
    assert_eq!(
        (
            &ended["ring_seconds"],
            &ended["talk_seconds"],
            &ended["total_seconds"]
        ),
        (&Value::from(5), &Value::from(58), &Value::from(65))
    );

    // call.recording_ready: when a recording completes, once.
    exec(
        pool,
        "INSERT INTO recordings (id, tenant_id, call_id, recording_sid, url, status)
         SELECT gen_random_uuid(), tenant_id, id, 'RE1', 'https://api.twilio.com/RE1', 'in-progress'
         FROM call_sessions WHERE id = $1",
        call,
    )
    .await;
    exec(
        pool,
        "UPDATE recordings SET status = 'completed', duration_seconds = 60 WHERE call_id = $1",
        call,
    )
    .await;
    exec(
        pool,
        "UPDATE recordings SET channels = 2 WHERE call_id = $1",
        call,
    )
    .await;

    // call.transcript_ready: the runtime's call.ended, with the segments.
    for (n, speaker) in ["caller", "agent"].iter().enumerate() {
        sqlx::query(
            "INSERT INTO transcript_segments (id, tenant_id, call_id, speaker, text, start_ms, end_ms, occurred_at)
             VALUES (gen_random_uuid(), $1, $2, $3, 'hello', $4, $4 + 10, now())",
        )
        .bind(s.tenant_id)
        .bind(call)
        .bind(speaker)
        .bind(i32::try_from(n).expect("n") * 100)
        .execute(pool)
        .await
        .expect("segment");
    }
    exec(
        pool,
        "INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, processed_at)
         SELECT gen_random_uuid(), tenant_id, id, 'call.ended', 'runtime-end', now() FROM call_sessions WHERE id = $1",
        call,
    )
    .await;

    // tool.execution_failed: an execution that fails.
    let tool = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tools (id, tenant_id, name, input_schema) VALUES ($1, $2, 'lookup', '{}')",
    )
    .bind(tool)
    .bind(s.tenant_id)
    .execute(pool)
    .await
    .expect("tool");
    sqlx::query(
        "INSERT INTO tool_executions (id, tenant_id, call_id, tool_id, trace_id, input, deadline_at)
         VALUES (gen_random_uuid(), $1, $2, $3, 't', '{}', now() + interval '1 minute')",
    )
    .bind(s.tenant_id)
    .bind(call)
    .bind(tool)
    .execute(pool)
    .await
    .expect("execution");
    exec(
        pool,
        "UPDATE tool_executions SET status = 'failed', error_code = 'http_status', http_status = 502 WHERE call_id = $1",
        call,
    )
    .await;

    // runtime.dispatch_expired: a dispatch nobody claimed.
    exec(
        pool,
        "INSERT INTO runtime_dispatches (id, tenant_id, call_id, agent_id, expires_at)
         SELECT gen_random_uuid(), tenant_id, id, agent_id, now() FROM call_sessions WHERE id = $1",
        call,
    )
    .await;
    exec(
        pool,
        "UPDATE runtime_dispatches SET status = 'expired' WHERE call_id = $1",
        call,
    )
    .await;

    let recorded = messages(pool, s.tenant_id).await;
    let find = |name: &str| -> Vec<&Value> {
        recorded
            .iter()
            .filter(|(t, _)| t == name)
            .map(|(_, d)| d)
            .collect()
    };
    let recording = find("call.recording_ready");
    assert_eq!(recording.len(), 1, "{recorded:?}");
    assert_eq!(recording[0]["recording_sid"], "RE1");
    assert_eq!(recording[0]["duration_seconds"], 60);
    assert!(
        recording[0].get("url").is_none(),
        "the URL is not part of the record"
    );
    let transcript = find("call.transcript_ready");
    assert_eq!(transcript.len(), 1);
    assert_eq!(transcript[0]["segments"], 2);
    let failed = find("tool.execution_failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error_code"], "http_status");
    assert_eq!(failed[0]["http_status"], 502);
    assert_eq!(failed[0]["agent_id"], s.agent_id.to_string());
    let expired = find("runtime.dispatch_expired");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["call_id"], call.to_string());
    assert_eq!(recorded.len(), 7, "{recorded:?}");
    // Each matches its schema in the OpenAPI document, field for field.
    for (event_type, data) in &recorded {
        shared::webhooks::check_data(event_type, data)
            .unwrap_or_else(|e| panic!("{event_type}: {e}: {data}"));
    }
    // Every message has one delivery for the endpoint.
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(deliveries, 7);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn no_event_without_its_change_and_none_unsubscribed(pool: PgPool) {
    let app = app(pool).await;
    let subscribed = seed(&app.pool).await;
    let unsubscribed = seed(&app.pool).await;
    endpoint(
        &app,
        subscribed.tenant_id,
        "https://hooks.example.com/x",
        &["call.ended"],
    )
    .await;
    // Another tenant's endpoint does not subscribe this tenant.
    endpoint(
        &app,
        unsubscribed.tenant_id,
        "https://hooks.example.com/y",
        &["call.answered"],
    )
    .await;

    // A change rolled back leaves no event.
    let mut tx = app.pool.begin().await.expect("tx");
    sqlx::query("UPDATE call_sessions SET status = 'completed', ended_at = now() WHERE id = $1")
        .bind(subscribed.call_id)
        .execute(&mut *tx)
        .await
        .expect("end");
    tx.rollback().await.expect("rollback");
    assert!(messages(&app.pool, subscribed.tenant_id).await.is_empty());

    for s in [subscribed, unsubscribed] {
        sqlx::query(
            "UPDATE call_sessions SET status = 'completed', ended_at = now() WHERE id = $1",
        )
        .bind(s.call_id)
        .execute(&app.pool)
        .await
        .expect("end");
    }
    assert_eq!(messages(&app.pool, subscribed.tenant_id).await.len(), 1);
    assert!(messages(&app.pool, unsubscribed.tenant_id).await.is_empty());
}
