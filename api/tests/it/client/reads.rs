//! One tenant's reads cannot starve the others: past its share of the read
//! pool a tenant gets 429 after a short wait, other tenants' reads and every tenant's
//! runtime work go on, and a read that runs too long is cancelled by
//! Postgres and answered 503 `read_timeout`.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::client::{Fixture, NewCall, get_json, viewer};
use api::testing::{TestApp, spawn_app_with};

/// Holds an exclusive lock on `transcript_segments` until dropped (rolled
/// back), so every transcript read waits for it.
async fn block_transcripts(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.pool.begin().await.expect("tx");
    sqlx::query("LOCK TABLE transcript_segments IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}

/// Waits (bounded) until `n` sessions wait for a lock: the reads are in
/// Postgres, holding their slots.
async fn wait_for_blocked_reads(app: &TestApp, n: i64) {
    let blocked = shared::testing::eventually(Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_one(&app.pool)
        .await
        .expect("activity");
        waiting >= n
    })
    .await;
    assert!(blocked, "{n} reads never reached Postgres");
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_tenant_past_its_share_gets_429_while_others_are_served(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.client_reads_per_tenant = 2;
        c.client_read_max_connections = 4;
    })
    .await;
    let a = app.create_tenant("noisy").await;
    let b = app.create_tenant("quiet").await;
    let a_call = Fixture {
        pool: &app.pool,
        tenant_id: a,
    }
    .call(NewCall::default())
    .await;
    Fixture {
        pool: &app.pool,
        tenant_id: b,
    }
    .call(NewCall::default())
    .await;
    let (a_token, b_token) = (viewer(&app, a), viewer(&app, b));
    let transcript = format!("/client/calls/{a_call}/transcript");

    let lock = block_transcripts(&app).await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let req = app.client.get(app.url(&transcript)).bearer_auth(&a_token);
            tokio::spawn(async move { req.send().await.expect("send").status().as_u16() })
        })
        .collect();
    wait_for_blocked_reads(&app, 2).await;

    // A third read of the same tenant is refused after a short wait, not
    // queued behind the others.
    let started = Instant::now();
    let resp = app.get("/client/calls", Some(&a_token)).await;
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Another tenant reads through the same pool, and the main pool (the
    // runtime's work, management) is untouched.
    let (status, page) = get_json(&app, "/client/calls", &b_token).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    let ops = app.token(b, shared::auth::Role::InternalAdmin);
    let (status, _) = get_json(&app, &format!("/internal/tenants/{b}"), &ops).await;
    assert_eq!(status, 200);

    drop(lock);
    for read in slow {
        assert_eq!(read.await.expect("read"), 200);
    }
    // The slots came back.
    let (status, _) = get_json(&app, "/client/calls", &a_token).await;
    assert_eq!(status, 200);
}

#[sqlx::test(migrator = "shared::db::MIGRATOR")]
async fn a_read_past_the_statement_timeout_is_503_read_timeout(pool: PgPool) {
    let app = spawn_app_with(pool, |c| {
        c.client_read_statement_timeout = Duration::from_millis(300);
    })
    .await;
    let a = app.create_tenant("slow").await;
    let call = Fixture {
        pool: &app.pool,
        tenant_id: a,
    }
    .call(NewCall::default())
    .await;
    let token = viewer(&app, a);
    let _lock = block_transcripts(&app).await;
    let started = Instant::now();
    let (status, body) = get_json(&app, &format!("/client/calls/{call}/transcript"), &token).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "read_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
