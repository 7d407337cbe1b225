//! The overhead the gateway adds to a tool call: p50/p99 of execute through
//! api + NATS + automation-worker against the local fake n8n, beside direct
//! calls to the same fake in the same run, both open-loop at a fixed rate.
//!
//! Ignored by default (it takes ~30 s and wants a release build):
//! `cargo test --release -p e2e --test it automation::bench -- --ignored --nocapture`
//! (`BENCH_RATE`, `BENCH_SECONDS` change the load; default 200/s for 10 s;
//! `AUTOMATION_SYNCHRONOUS_COMMIT=false` measures the worker without the
//! outcome's WAL flush; `DATABASE_URL` names the server, by default the
//! local one without TLS).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shared::auth::Role;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Mutex;

use crate::automation::worker::start_worker_with;
use api::testing::fixtures::{ToolSpec, insert_integration, insert_tool, seed};
use api::testing::n8n::FakeN8n;
use api::testing::spawn_app_with;

pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh database for the run (sqlx::test's runtime is single-threaded;
/// a benchmark wants the multi-threaded one the binaries use).
pub(crate) async fn fresh_database() -> (PgPool, String, String) {
    // Postgres on this machine: no TLS on loopback (it only costs CPU).
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into());
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await
        .expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create database");
    // The same server and options (`?sslmode=...`), another database.
    let mut url = url::Url::parse(&admin_url).expect("DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    // The binaries' pool settings (no ping per query).
    let pool = shared::db::pool_options(40)
        .connect(&url)
        .await
        .expect("bench database");
    shared::db::migrate(&pool).await.expect("migrate");
    (pool, admin_url, name)
}

/// Drops the run's database (made by [`fresh_database`]).
pub(crate) async fn drop_database(pool: PgPool, admin_url: &str, name: &str) {
    pool.close().await;
    if let Ok(admin) = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
    {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends `total` requests open-loop at `rate`/s; returns sorted latencies
/// and the number of failures.
async fn open_loop<F, Fut>(rate: u64, total: u64, send: F) -> (Vec<Duration>, usize)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        tick.tick().await;
        let fut = send(i);
        let latencies = latencies.clone();
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let ok = fut.await;
            let elapsed = started.elapsed();
            if ok {
                latencies.lock().await.push(elapsed);
            } else {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = latencies.lock().await.clone();
    l.sort_unstable();
    (l, failures.load(std::sync::atomic::Ordering::Relaxed))
}

/// Calls enough for `rate` executions/s with each call making one every 5 s.
fn calls_needed(rate: u64) -> u64 {
    (rate * 5).max(20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn automation_bench_gateway_overhead() {
    let rate = env_u64("BENCH_RATE", 200);
    let seconds = env_u64("BENCH_SECONDS", 10);
    let total = rate * seconds;
    let (pool, admin_url, db_name) = fresh_database().await;
    // The default per-call limit (AUTOMATION_MAX_EXECUTIONS_PER_MINUTE=30),
    // as in production.
    let app = spawn_app_with(pool.clone(), |_| {}).await;
    let n8n = FakeN8n::start().await;
    // The worker's outcome commit waits for the WAL flush unless
    // AUTOMATION_SYNCHRONOUS_COMMIT=false, as in production.
    let durable = std::env::var("AUTOMATION_SYNCHRONOUS_COMMIT").map_or(true, |v| v != "false");
    let worker = start_worker_with(&app, |c| c.automation.synchronous_commit = durable).await;
    // Many calls at once, as on a platform doing this rate: each call makes
    // a tool call every few seconds (under the default limit of 30 a
    // minute), and one call's executions serialise on its rate check.
    let mut calls = Vec::new();
    let first = seed(&app.pool).await;
    calls.push(first.call_id);
    let integration =
        insert_integration(&app, first.tenant_id, &n8n.base, "none", None, None).await;
    let tool_id = insert_tool(
        &app.pool,
        first.tenant_id,
        Some(integration),
        ToolSpec::new("lookup", "ok"),
    )
    .await;
    for i in 1..calls_needed(rate) {
        let call_id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO call_sessions (id, tenant_id, call_sid, agent_id, agent_version_id) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(call_id)
        .bind(first.tenant_id)
        .bind(format!("CAbench{i}{}", call_id.simple()))
        .bind(first.agent_id)
        .bind(first.version_id)
        .execute(&app.pool)
        .await
        .expect("call");
        calls.push(call_id);
    }
    let token = app.token(first.tenant_id, Role::InternalOperator);
    let client = reqwest::Client::new();
    let direct_url = format!("{}/webhook/ok", n8n.base);
    let gateway_url = app.url(&format!("/internal/automation/tools/{tool_id}/execute"));
    let payload = |call_id: uuid::Uuid| json!({"call_id": call_id, "input_json": {"order_id": "A-123", "quantity": 2}});

    // Warm-up: connections, caches, JIT-free but pools fill.
    for i in 0..50u64 {
        let call_id = calls[(i as usize) % calls.len()];
        let _ = client
            .post(&direct_url)
            .json(&payload(call_id))
            .send()
            .await;
        let _ = client
            .post(&gateway_url)
            .bearer_auth(&token)
            .json(&payload(call_id))
            .send()
            .await;
    }

    let (direct, direct_failed) = open_loop(rate, total, |i| {
        let req = client.post(&direct_url).json(
            &json!({"tool": "lookup", "input": {"order_id": "A-123", "quantity": 2}, "i": i}),
        );
        async move { req.send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    let (gateway, gateway_failed) = open_loop(rate, total, |i| {
        let call_id = calls[(i as usize) % calls.len()];
        let req = client
            .post(&gateway_url)
            .bearer_auth(&token)
            .json(&payload(call_id));
        async move { req.send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;

    // The machine's own floor at the same rate: one Postgres round trip
    // (`SELECT 1`). At a modest rate most of it is waking idle cores, and
    // the gateway's path has three of them plus four NATS hops.
    let floor_pool = pool.clone();
    let (floor, floor_failed) = open_loop(rate, total, move |_| {
        let pool = floor_pool.clone();
        async move { sqlx::query("SELECT 1").execute(&pool).await.is_ok() }
    })
    .await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (d50, d99) = (percentile(&direct, 50.0), percentile(&direct, 99.0));
    let (g50, g99) = (percentile(&gateway, 50.0), percentile(&gateway, 99.0));
    println!(
        "automation gateway benchmark: {rate}/s for {seconds} s ({total} calls each), \
         AUTOMATION_SYNCHRONOUS_COMMIT={durable}"
    );
    println!(
        "direct to fake n8n : p50 {:.2} ms  p99 {:.2} ms  failures {direct_failed}",
        ms(d50),
        ms(d99)
    );
    println!(
        "api+NATS+worker    : p50 {:.2} ms  p99 {:.2} ms  failures {gateway_failed}",
        ms(g50),
        ms(g99)
    );
    println!(
        "postgres SELECT 1  : p50 {:.2} ms  p99 {:.2} ms  failures {floor_failed}  (the machine: one round trip at this rate)",
        ms(percentile(&floor, 50.0)),
        ms(percentile(&floor, 99.0))
    );
    println!(
        "overhead           : p50 {:.2} ms  p99 {:.2} ms  (target < 2 ms / < 5 ms)",
        ms(g50.saturating_sub(d50)),
        ms(g99.saturating_sub(d99))
    );

    worker.shutdown().await;
    drop(app);
    drop_database(pool, &admin_url, &db_name).await;
    assert_eq!(gateway_failed, 0, "gateway calls failed");
}
