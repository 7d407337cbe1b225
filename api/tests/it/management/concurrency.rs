//! Concurrent-call limits through the api: set on the tenant and on an
//! agent (validated, audited), and the concurrency figures on both surfaces.

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::spawn_app;

/// A call of `tenant` that rang `minutes_ago` and, if given, was released
/// `released_minutes_ago`; `rejected` for one refused for capacity.
async fn call(
    pool: &PgPool,
    tenant: Uuid,
    agent: Option<Uuid>,
    minutes_ago: i32,
    released_minutes_ago: Option<i32>,
    rejected: bool,
) {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO call_sessions (id, tenant_id, call_sid, agent_id, started_at, status,
                                    live, rejected_reason, released_at, release_reason)
         VALUES ($1, $2, $3, $4, now() - make_interval(mins => $5),
                 CASE WHEN $7 THEN 'rejected' ELSE 'ringing' END,
                 NOT $7 AND $6::int IS NULL,
                 CASE WHEN $7 THEN 'capacity' END,
                 now() - make_interval(mins => $6::int),
                 CASE WHEN $6::int IS NOT NULL THEN 'ended' END)",
    )
    .bind(id)
    .bind(tenant)
    .bind(format!("CA{}", id.simple()))
    .bind(agent)
    .bind(minutes_ago)
    .bind(released_minutes_ago)
    .bind(rejected)
    .execute(pool)
    .await
    .expect("insert call");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn limits_are_validated_audited_and_shown(pool: PgPool) {
    let app = spawn_app(pool).await;
    let s = seed(&app, "acme", "+14155550800").await;
    let t = &s.tokens.operator;
    let tenant_path = format!("/internal/tenants/{}", s.tenant);
    let agent_path = format!("/internal/agents/{}", s.agent);

    for bad in [json!(-1), json!(100_001), json!("ten")] {
        let (status, body) =
            patch(&app, &tenant_path, t, &json!({"max_concurrent_calls": bad})).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let (status, body) =
            patch(&app, &agent_path, t, &json!({"max_concurrent_calls": bad})).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, tenant) = patch(&app, &tenant_path, t, &json!({"max_concurrent_calls": 10})).await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["max_concurrent_calls"], 10);
    let (status, agent) = patch(&app, &agent_path, t, &json!({"max_concurrent_calls": 2})).await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["max_concurrent_calls"], 2);
    let (_, agent) = get(&app, &agent_path, t).await;
    assert_eq!(agent["max_concurrent_calls"], 2);
    // null clears; absent leaves alone.
    let (_, agent) = patch(&app, &agent_path, t, &json!({"name": "Desk"})).await;
    assert_eq!(agent["max_concurrent_calls"], 2);
    let (_, agent) = patch(&app, &agent_path, t, &json!({"max_concurrent_calls": null})).await;
    assert!(agent["max_concurrent_calls"].is_null(), "{agent}");
    let (status, _) = patch(&app, &agent_path, t, &json!({})).await;
    assert_eq!(status, 400);

    // Another tenant's agent is not found.
    let other = seed(&app, "other", "+14155550801").await;
    let (status, _) = patch(
        &app,
        &format!("/internal/agents/{}", other.agent),
        t,
        &json!({"max_concurrent_calls": 1}),
    )
    .await;
    assert_eq!(status, 404);

    let audited: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT action, details FROM audit_log
         WHERE tenant_id = $1 AND action IN ('tenant.update', 'agent.update') ORDER BY created_at, id",
    )
    .bind(s.tenant)
    .fetch_all(&app.pool)
    .await
    .expect("audit");
    assert_eq!(audited.len(), 4, "{audited:?}");
    assert_eq!(audited[0].0, "tenant.update");
    assert_eq!(audited[0].1["max_concurrent_calls"], 10);
    assert_eq!(audited[1].1["max_concurrent_calls"], 2);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn concurrency_figures_count_live_peak_and_refused(pool: PgPool) {
    let app = spawn_app(pool).await;
    let s = seed(&app, "acme", "+14155550810").await;
    let other = seed(&app, "other", "+14155550811").await;
    sqlx::query("UPDATE tenants SET max_concurrent_calls = 5 WHERE id = $1")
        .bind(s.tenant)
        .execute(&app.pool)
        .await
        .expect("limit");
    sqlx::query("UPDATE agents SET max_concurrent_calls = 3 WHERE id = $1")
        .bind(s.agent)
        .execute(&app.pool)
        .await
        .expect("agent limit");
    let pool = &app.pool;
    // Two live calls now, one of the agent.
    call(pool, s.tenant, Some(s.agent), 5, None, false).await;
    call(pool, s.tenant, None, 3, None, false).await;
    // Three hours ago, four calls overlapped: the peak of the last day.
    for i in 0..4 {
        call(pool, s.tenant, None, 180 + i, Some(170), false).await;
    }
    // Two days ago, six overlapped: outside the window.
    for i in 0..6 {
        call(pool, s.tenant, None, 2900 + i, Some(2890), false).await;
    }
    // Refused for capacity: two in the last day, one before.
    call(pool, s.tenant, None, 60, None, true).await;
    call(pool, s.tenant, None, 61, None, true).await;
    call(pool, s.tenant, None, 1500, None, true).await;
    // Another tenant's calls count for it only.
    for _ in 0..7 {
        call(pool, other.tenant, None, 1, None, false).await;
    }

    let expected = |body: &serde_json::Value| {
        assert_eq!(body["tenant_id"], s.tenant.to_string(), "{body}");
        assert_eq!(body["max_concurrent_calls"], 5, "{body}");
        assert_eq!(body["live_calls"], 2, "{body}");
        assert_eq!(body["peak_live_calls_24h"], 4, "{body}");
        assert_eq!(body["rejected_for_capacity_24h"], 2, "{body}");
        assert_eq!(
            body["agents"],
            json!([{"agent_id": s.agent, "max_concurrent_calls": 3, "live_calls": 1}]),
            "{body}"
        );
    };
    let (status, internal) = get(
        &app,
        &format!("/internal/tenants/{}/concurrency", s.tenant),
        &s.tokens.operator,
    )
    .await;
    assert_eq!(status, 200, "{internal}");
    expected(&internal);
    let (status, client) = get(&app, "/client/concurrency", &s.tokens.viewer).await;
    assert_eq!(status, 200, "{client}");
    expected(&client);

    // Another tenant's figures are not to be had from this token.
    let (status, _) = get(
        &app,
        &format!("/internal/tenants/{}/concurrency", other.tenant),
        &s.tokens.operator,
    )
    .await;
    assert_eq!(status, 404);
    let (_, theirs) = get(&app, "/client/concurrency", &other.tokens.viewer).await;
    assert_eq!(theirs["live_calls"], 7);
    assert!(theirs["max_concurrent_calls"].is_null());
    assert_eq!(theirs["peak_live_calls_24h"], 7);
}
