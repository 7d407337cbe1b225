//! Tenant off-boarding: `DELETE /internal/tenants/{tenant_id}` refused
//! under a legal hold, then everything of the tenant deleted in batches
//! with its progress readable, numbers out of routing at once, another
//! tenant untouched; and two runs at once doing the work once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::offboarding;
use shared::retention::Pace;
use sqlx::PgPool;
use uuid::Uuid;

use super::support::*;
use api::testing::{TestApp, spawn_app};

/// Rows per table that belong to `tenant` (the tenant row itself for
/// `tenants`), and a digest of them.
async fn rows_of(pool: &PgPool, tenant: Uuid) -> Vec<(String, i64, String)> {
    let mut out = Vec::new();
    for table in TABLES {
        let filter = match *table {
            "users" => continue,
            "tenants" => "id = $1",
            _ => "tenant_id = $1",
        };
        let sql = format!(
            "SELECT count(*), COALESCE(md5(string_agg(t::text, ',' ORDER BY t::text)), '')
             FROM {table} t WHERE {filter}"
        );
        let (count, digest): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant)
            .fetch_one(pool)
            .await
            .expect("rows");
        out.push(((*table).to_owned(), count, digest));
    }
    out
}

/// Polls the progress until the off-boarding completes.
async fn until_completed(app: &TestApp, tenant: Uuid, token: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, progress) = get(
            app,
            &format!("/internal/tenants/{tenant}/offboarding"),
            token,
        )
        .await;
        assert_eq!(s, 200, "{progress}");
        if progress["status"] == "completed" {
            return progress;
        }
        assert!(Instant::now() < deadline, "not completed: {progress}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn offboarding_waits_for_holds_then_deletes_everything_of_the_tenant(pool: PgPool) {
    let app = spawn_app(pool).await;
    let leaving = seed(&app, "Leaving", "+14155550181").await;
    let staying = seed(&app, "Staying", "+14155550182").await;
    for _ in 0..3 {
        insert_call(&app.pool, leaving.tenant).await;
    }
    let admin = &leaving.tokens.admin;
    let path = format!("/internal/tenants/{}", leaving.tenant);
    let staying_before = rows_of(&app.pool, staying.tenant).await;

    // Not before progress exists, not for an operator, not another tenant.
    let (s, body) = get(&app, &format!("{path}/offboarding"), admin).await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = delete(&app, &path, &leaving.tokens.operator).await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = delete(
        &app,
        &format!("/internal/tenants/{}", staying.tenant),
        admin,
    )
    .await;
    assert_eq!(s, 404, "{body}");

    // Under a hold (the seeded one, on a call): refused, naming it,
    // nothing changed.
    let before = rows_of(&app.pool, leaving.tenant).await;
    let (s, body) = delete(&app, &path, admin).await;
    assert_eq!(s, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&leaving.hold.to_string()), "{body}");
    assert_eq!(rows_of(&app.pool, leaving.tenant).await, before);

    let (s, body) = post(
        &app,
        &format!("/internal/legal-holds/{}/release", leaving.hold),
        admin,
        &json!({}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let mut changes = app
        .nats
        .subscribe(app.subjects.routes_changed())
        .await
        .expect("subscribe");
    app.nats.flush().await.expect("flush");
    let (s, started) = delete(&app, &path, admin).await;
    // Every ingress is told to drop its cached routes.
    let announced = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut changes),
    )
    .await;
    assert!(
        matches!(announced, Ok(Some(_))),
        "the off-boarding was not announced"
    );
    assert_eq!(s, 202, "{started}");
    assert_eq!(started["tenant_id"], leaving.tenant.to_string());
    assert!(started["requested_by"].is_string(), "{started}");

    // The number stopped routing at once: the ingress's lookup finds it no
    // more (whether its row is still there or already gone).
    let routed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM phone_numbers p JOIN tenants t ON t.id = p.tenant_id
         WHERE p.e164 = '+14155550181' AND p.status = 'active' AND t.offboarding_at IS NULL",
    )
    .fetch_one(&app.pool)
    .await
    .expect("routed");
    assert_eq!(routed, 0);
    // No hold can be placed on a tenant being off-boarded (or gone).
    let (s, body) = post(
        &app,
        "/internal/legal-holds",
        admin,
        &json!({"tenant_id": leaving.tenant, "reason": "too late"}),
    )
    .await;
    assert!(s == 409 || s == 404, "{s} {body}");

    let done = until_completed(&app, leaving.tenant, admin).await;
    assert_eq!(done["remaining_calls"], 0, "{done}");
    assert_eq!(done["deleted"]["calls"], 4, "{done}");
    assert_eq!(done["deleted"]["transcript_segments"], 4, "{done}");
    assert_eq!(done["deleted"]["recordings"], 4, "{done}");
    assert!(done["completed_at"].is_string(), "{done}");
    // Asking again answers with the same, completed progress.
    let (s, again) = delete(&app, &path, admin).await;
    assert_eq!(s, 202, "{again}");
    assert_eq!(again["status"], "completed");

    // Nothing of the tenant is left; the other tenant is as it was.
    for (table, count, _) in rows_of(&app.pool, leaving.tenant).await {
        assert_eq!(count, 0, "{table} still has rows of the tenant");
    }
    assert_eq!(rows_of(&app.pool, staying.tenant).await, staying_before);
    let (s, _) = get(&app, &path, admin).await;
    assert_eq!(s, 404);
    // The audit log keeps the start and the end, without the tenant.
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log
         WHERE target_type = 'tenant' AND target_id = $1::text AND tenant_id IS NULL
         ORDER BY created_at, id",
    )
    .bind(leaving.tenant)
    .fetch_all(&app.pool)
    .await
    .expect("audit");
    assert!(
        actions.contains(&"tenant.offboard".to_owned()),
        "{actions:?}"
    );
    assert_eq!(
        actions.last().map(String::as_str),
        Some("tenant.offboarded")
    );
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn two_runs_at_once_delete_the_tenant_once(pool: PgPool) {
    let app = spawn_app(pool).await;
    let tenant = app.create_tenant("Leaving").await;
    for _ in 0..25 {
        insert_call(&app.pool, tenant).await;
    }
    // Started as the api would have, without its own run (the api stopped).
    sqlx::query("UPDATE tenants SET offboarding_at = now() WHERE id = $1")
        .bind(tenant)
        .execute(&app.pool)
        .await
        .expect("mark");
    sqlx::query("INSERT INTO tenant_offboardings (tenant_id, requested_by) VALUES ($1, 'test')")
        .bind(tenant)
        .execute(&app.pool)
        .await
        .expect("offboarding");
    assert_eq!(
        offboarding::unfinished(&app.pool)
            .await
            .expect("unfinished"),
        vec![tenant]
    );
    let (s, body) = post(
        &app,
        "/internal/legal-holds",
        &tokens(&app, tenant).admin,
        &json!({"tenant_id": tenant, "reason": "too late"}),
    )
    .await;
    assert_eq!(s, 409, "{body}");

    let (a, b) = tokio::join!(
        offboarding::run(&app.pool, tenant, Pace::unpaced(2)),
        offboarding::run(&app.pool, tenant, Pace::unpaced(2))
    );
    let ran = [a.expect("run a"), b.expect("run b")];
    assert_eq!(ran.iter().filter(|r| **r).count(), 1, "{ran:?}");
    let mut conn = app.pool.acquire().await.expect("conn");
    let progress = offboarding::progress(&mut conn, tenant)
        .await
        .expect("progress")
        .expect("row");
    assert_eq!(progress.status, "completed");
    // Each call counted once, though two runs were at it.
    assert_eq!(progress.deleted.calls, 25);
    assert_eq!(progress.deleted.events, 25);
    assert!(
        offboarding::unfinished(&app.pool)
            .await
            .expect("unfinished")
            .is_empty()
    );
    // A later run has nothing to do.
    assert!(
        !offboarding::run(&app.pool, tenant, Pace::unpaced(2))
            .await
            .expect("run")
    );
    let (tenants, calls): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenants WHERE id = $1),
                (SELECT count(*) FROM call_sessions WHERE tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_one(&app.pool)
    .await
    .expect("counts");
    assert_eq!((tenants, calls), (0, 0));
}
