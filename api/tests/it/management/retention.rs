//! Retention: the purge (`shared::retention::purge`, run by the
//! dispatch-worker on a schedule) and its preview
//! (`GET /internal/tenants/{tenant_id}/retention`), on hand-built calls
//! around the boundary, with and without legal holds.

use serde_json::json;
use shared::retention::{Pace, Purged, purge};
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::{TestApp, spawn_app};

/// A call of `tenant` that started `age` ago, with one of everything that
/// hangs off a call: an event, a transcript segment, a recording, a tool
/// execution and a dispatch.
async fn call_aged(pool: &PgPool, tenant: Uuid, tool: Uuid, age: &str) -> Uuid {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await.expect("tx");
    sqlx::query(
        "INSERT INTO call_sessions (id, tenant_id, call_sid, status, started_at)
         VALUES ($1, $2, 'CA' || replace($1::text, '-', ''), 'completed', now() - $3::interval)",
    )
    .bind(id)
    .bind(tenant)
    .bind(age)
    .execute(&mut *tx)
    .await
    .expect("call");
    for sql in [
        "INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key)
         VALUES (gen_random_uuid(), $2, $1, 'call.status', 'completed')",
        "INSERT INTO transcript_segments (id, tenant_id, call_id, speaker, text, start_ms, end_ms, occurred_at)
         VALUES (gen_random_uuid(), $2, $1, 'caller', 'my card is 4111 1111 1111 1111', 0, 10, now())",
        "INSERT INTO recordings (id, tenant_id, call_id, recording_sid)
         VALUES (gen_random_uuid(), $2, $1, 'RE' || replace($1::text, '-', ''))",
        "INSERT INTO runtime_dispatches (id, tenant_id, call_id, status, expires_at)
         VALUES (gen_random_uuid(), $2, $1, 'expired', now())",
    ] {
        sqlx::query(sql)
            .bind(id)
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    sqlx::query(
        "INSERT INTO tool_executions (id, tenant_id, call_id, tool_id, trace_id, input, deadline_at)
         VALUES (gen_random_uuid(), $2, $1, $3, 't', '{}', now())",
    )
    .bind(id)
    .bind(tenant)
    .bind(tool)
    .execute(&mut *tx)
    .await
    .expect("execution");
    tx.commit().await.expect("commit");
    id
}

async fn tenant_with_tool(app: &TestApp, name: &str, retention_days: Option<i32>) -> (Uuid, Uuid) {
    let tenant = app.create_tenant(name).await;
    sqlx::query("UPDATE tenants SET retention_days = $2 WHERE id = $1")
        .bind(tenant)
        .bind(retention_days)
        .execute(&app.pool)
        .await
        .expect("retention");
    let tool = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tools (id, tenant_id, name, input_schema) VALUES ($1, $2, 'lookup', '{}')",
    )
    .bind(tool)
    .bind(tenant)
    .execute(&app.pool)
    .await
    .expect("tool");
    (tenant, tool)
}

async fn exists(pool: &PgPool, call: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM call_sessions WHERE id = $1)")
        .bind(call)
        .fetch_one(pool)
        .await
        .expect("exists")
}

/// Rows of every table that hangs off a call, for the whole database.
async fn dependents(pool: &PgPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "call_events",
        "transcript_segments",
        "recordings",
        "tool_executions",
        "runtime_dispatches",
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(pool)
                .await
                .expect("count");
        counts.push(n);
    }
    counts
}

const ONE_CALL: Purged = Purged {
    calls: 1,
    events: 1,
    transcript_segments: 1,
    recordings: 1,
    tool_executions: 1,
    runtime_dispatches: 1,
};

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn calls_past_retention_go_with_everything_that_hangs_off_them(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (tenant, tool) = tenant_with_tool(&app, "Thirty days", Some(30)).await;
    let (forever, forever_tool) = tenant_with_tool(&app, "Keeps all", None).await;
    let (other, other_tool) = tenant_with_tool(&app, "Ninety days", Some(90)).await;
    let expired = call_aged(&app.pool, tenant, tool, "30 days 1 minute").await;
    let kept = call_aged(&app.pool, tenant, tool, "29 days 23 hours 59 minutes").await;
    let ancient = call_aged(&app.pool, forever, forever_tool, "3 years").await;
    let other_kept = call_aged(&app.pool, other, other_tool, "60 days").await;

    // The preview says what the run will do.
    let token = tokens(&app, tenant).operator;
    let (s, preview) = get(
        &app,
        &format!("/internal/tenants/{tenant}/retention"),
        &token,
    )
    .await;
    assert_eq!(s, 200, "{preview}");
    assert_eq!(preview["retention_days"], 30);
    assert_eq!(
        preview["would_purge"],
        json!({"calls": 1, "events": 1, "transcript_segments": 1, "recordings": 1,
               "tool_executions": 1, "runtime_dispatches": 1})
    );
    assert_eq!(preview["held_calls"], 0);
    let kept_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT started_at FROM call_sessions WHERE id = $1")
            .bind(kept)
            .fetch_one(&app.pool)
            .await
            .expect("kept");
    let oldest: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(preview["oldest_kept"].clone()).expect("oldest_kept");
    assert_eq!(oldest, kept_at);
    let before = dependents(&app.pool).await;

    let run = purge(&app.pool, Pace::unpaced(500)).await.expect("purge");
    assert!(!run.skipped);
    assert_eq!(run.tenants, vec![(tenant, ONE_CALL)]);
    assert!(!exists(&app.pool, expired).await);
    for call in [kept, ancient, other_kept] {
        assert!(exists(&app.pool, call).await, "{call} kept");
    }
    let after = dependents(&app.pool).await;
    assert!(
        before.iter().zip(&after).all(|(b, a)| b - a == 1),
        "one of each went: {before:?} -> {after:?}"
    );
    let (s, audit) = get(
        &app,
        &format!("/internal/audit-log?tenant_id={tenant}&action=retention.purge"),
        &tokens(&app, tenant).admin,
    )
    .await;
    assert_eq!(s, 200, "{audit}");
    let entries = audit["items"].as_array().expect("items");
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["actor"], "dispatch-worker");
    assert_eq!(entries[0]["details"]["purged"]["calls"], 1);
    assert_eq!(entries[0]["details"]["purged"]["transcript_segments"], 1);

    // Nothing left to do: the next run purges nothing and writes no entry.
    let again = purge(&app.pool, Pace::unpaced(500)).await.expect("purge");
    assert!(again.tenants.is_empty());
    let (_, preview) = get(
        &app,
        &format!("/internal/tenants/{tenant}/retention"),
        &token,
    )
    .await;
    assert_eq!(preview["would_purge"]["calls"], 0);
    // Another tenant's preview is not this token's.
    let (s, _) = get(
        &app,
        &format!("/internal/tenants/{other}/retention"),
        &token,
    )
    .await;
    assert_eq!(s, 404);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn held_calls_stay_until_the_hold_is_released(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (tenant, tool) = tenant_with_tool(&app, "Held", Some(7)).await;
    let admin = tokens(&app, tenant).admin;
    let held = call_aged(&app.pool, tenant, tool, "8 days").await;
    let free = call_aged(&app.pool, tenant, tool, "9 days").await;
    let (s, hold) = post(
        &app,
        "/internal/legal-holds",
        &admin,
        &json!({"tenant_id": tenant, "call_id": held, "reason": "dispute"}),
    )
    .await;
    assert_eq!(s, 201, "{hold}");
    let (_, preview) = get(
        &app,
        &format!("/internal/tenants/{tenant}/retention"),
        &admin,
    )
    .await;
    assert_eq!(preview["would_purge"]["calls"], 1);
    assert_eq!(preview["held_calls"], 1);

    let run = purge(&app.pool, Pace::unpaced(500)).await.expect("purge");
    assert_eq!(run.tenants, vec![(tenant, ONE_CALL)]);
    assert!(exists(&app.pool, held).await);
    assert!(!exists(&app.pool, free).await);

    // A hold on the whole tenant keeps every call, whatever its age.
    let older = call_aged(&app.pool, tenant, tool, "400 days").await;
    let (s, tenant_hold) = post(
        &app,
        "/internal/legal-holds",
        &admin,
        &json!({"tenant_id": tenant, "reason": "regulator"}),
    )
    .await;
    assert_eq!(s, 201, "{tenant_hold}");
    let (s, _) = post(
        &app,
        &format!("/internal/legal-holds/{}/release", id_of(&hold)),
        &admin,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        purge(&app.pool, Pace::unpaced(500))
            .await
            .expect("purge")
            .tenants
            .is_empty()
    );
    assert!(exists(&app.pool, held).await && exists(&app.pool, older).await);

    // Released: the next run purges both.
    let (s, _) = post(
        &app,
        &format!("/internal/legal-holds/{}/release", id_of(&tenant_hold)),
        &admin,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200);
    let run = purge(&app.pool, Pace::unpaced(500)).await.expect("purge");
    assert_eq!(run.tenants.len(), 1);
    assert_eq!(run.tenants[0].1.calls, 2);
    assert!(!exists(&app.pool, held).await && !exists(&app.pool, older).await);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn two_purges_at_once_do_the_work_once_in_small_batches(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (tenant, tool) = tenant_with_tool(&app, "Busy", Some(1)).await;
    for _ in 0..9 {
        call_aged(&app.pool, tenant, tool, "2 days").await;
    }
    // Batches of 2: five transactions for nine calls.
    let (one, two) = tokio::join!(
        purge(&app.pool, Pace::unpaced(2)),
        purge(&app.pool, Pace::unpaced(2))
    );
    let (one, two) = (one.expect("purge"), two.expect("purge"));
    let calls: i64 = one
        .tenants
        .iter()
        .chain(&two.tenants)
        .map(|(_, p)| p.calls)
        .sum();
    assert_eq!(calls, 9);
    assert!(
        one.skipped || two.skipped || one.tenants.is_empty() || two.tenants.is_empty(),
        "one run did the work: {one:?} {two:?}"
    );
    let entries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'retention.purge' AND tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&app.pool)
    .await
    .expect("audit");
    assert_eq!(entries, 1);
    assert_eq!(app.count("call_sessions").await, 0);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn erasure_takes_every_call_of_a_caller_but_the_held_ones(pool: PgPool) {
    let app = spawn_app(pool).await;
    let (tenant, tool) = tenant_with_tool(&app, "Erasure", None).await;
    let (other, other_tool) = tenant_with_tool(&app, "Other", None).await;
    let caller = "+14155550123";
    let mut calls = Vec::new();
    for age in ["1 day", "2 days", "3 days"] {
        let call = call_aged(&app.pool, tenant, tool, age).await;
        calls.push(call);
    }
    let someone_else = call_aged(&app.pool, tenant, tool, "1 day").await;
    let same_number_elsewhere = call_aged(&app.pool, other, other_tool, "1 day").await;
    sqlx::query("UPDATE call_sessions SET from_number = $1 WHERE id = ANY($2)")
        .bind(caller)
        .bind(
            calls
                .iter()
                .copied()
                .chain([same_number_elsewhere])
                .collect::<Vec<_>>(),
        )
        .execute(&app.pool)
        .await
        .expect("caller");
    let admin = tokens(&app, tenant).admin;
    let (s, hold) = post(
        &app,
        "/internal/legal-holds",
        &admin,
        &json!({"tenant_id": tenant, "call_id": calls[0], "reason": "fraud case"}),
    )
    .await;
    assert_eq!(s, 201, "{hold}");

    // Event webhook messages of the calls hold the number too.
    for call in &calls {
        sqlx::query(
            "INSERT INTO webhook_messages (id, tenant_id, event_type, data)
             VALUES (gen_random_uuid(), $1, 'call.ended', jsonb_build_object('call_id', $2::text, 'from', $3::text))",
        )
        .bind(tenant)
        .bind(call)
        .bind(caller)
        .execute(&app.pool)
        .await
        .expect("message");
    }
    let operator = tokens(&app, tenant).operator;
    let (s, answer) = post(
        &app,
        "/internal/calls/erase",
        &operator,
        &json!({"tenant_id": tenant, "phone_number": caller}),
    )
    .await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["erased"]["calls"], 2);
    assert_eq!(answer["erased"]["transcript_segments"], 2);
    assert_eq!(answer["erased"]["tool_executions"], 2);
    assert_eq!(
        answer["held"],
        json!([{"call_id": calls[0], "hold_id": id_of(&hold), "tenant_wide": false, "reason": "fraud case"}])
    );
    assert!(exists(&app.pool, calls[0]).await);
    assert!(!exists(&app.pool, calls[1]).await && !exists(&app.pool, calls[2]).await);
    let messages: Vec<String> = sqlx::query_scalar("SELECT data->>'call_id' FROM webhook_messages")
        .fetch_all(&app.pool)
        .await
        .expect("messages");
    assert_eq!(
        messages,
        [calls[0].to_string()],
        "the erased calls' messages went"
    );
    assert!(exists(&app.pool, someone_else).await);
    assert!(
        exists(&app.pool, same_number_elsewhere).await,
        "another tenant's call"
    );
    // The audit entry has the counts, never the number.
    let details: String = sqlx::query_scalar(
        "SELECT details::text FROM audit_log WHERE action = 'calls.erase' AND tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(&app.pool)
    .await
    .expect("audit");
    assert!(!details.contains("4155550123"), "{details}");
    assert!(details.contains(&calls[0].to_string()), "{details}");

    // Another tenant's token cannot erase here; an empty number is a 400.
    let (s, _) = post(
        &app,
        "/internal/calls/erase",
        &tokens(&app, other).admin,
        &json!({"tenant_id": tenant, "phone_number": caller}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = post(
        &app,
        "/internal/calls/erase",
        &operator,
        &json!({"tenant_id": tenant, "phone_number": " "}),
    )
    .await;
    assert_eq!(s, 400);
}
