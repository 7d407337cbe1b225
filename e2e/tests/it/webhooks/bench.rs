//! Event webhook deliveries: deliveries/s at saturation, and event-to-
//! delivery latency at a fixed rate, to a local receiver; beside them, in
//! the same run, the machine's limits for the two things each delivery
//! needs: an HTTP POST to the receiver, and one commit of the attempt's
//! record.
//!
//! Ignored by default (it wants a release build):
//! `cargo test --release -p e2e --test it webhooks::bench -- --ignored --nocapture`
//! (`BENCH_EVENTS` at saturation, default 20000; `BENCH_RATE` and
//! `BENCH_SECONDS` for the latency run, default 200/s for 10 s;
//! `BENCH_ENDPOINTS`, default 4, one tenant each).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::receiver::Receiver;
use super::{endpoint, worker_with};
use crate::automation::bench::{drop_database, env_u64, fresh_database, percentile};
use api::testing::spawn_app_with;

/// Requests/s one client makes to the receiver with 64 requests at once.
async fn http_limit(receiver: &Receiver, seconds: u64) -> f64 {
    let client = reqwest::Client::new();
    let url = receiver.url("/limit");
    let until = Instant::now() + Duration::from_secs(seconds);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, url, done) = (client.clone(), url.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(r#"{"type":"limit"}"#)
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / seconds as f64
}

/// Commits/s of the minimum SQL of one delivery's record (its row updated,
/// its attempt inserted), 64 connections at once, on the same database.
async fn record_limit(pool: &PgPool, tenant: Uuid, endpoint: Uuid, seconds: u64) -> f64 {
    let rows: Vec<Uuid> = sqlx::query_scalar(
        "WITH m AS (
             INSERT INTO webhook_messages (id, tenant_id, event_type, data)
             SELECT gen_random_uuid(), $1, 'webhook.test', '{}' FROM generate_series(1, 64)
             RETURNING id)
         INSERT INTO webhook_deliveries (id, tenant_id, message_id, endpoint_id, status)
         SELECT gen_random_uuid(), $1, id, $2, 'succeeded' FROM m
         RETURNING id",
    )
    .bind(tenant)
    .bind(endpoint)
    .fetch_all(pool)
    .await
    .expect("rows");
    let until = Instant::now() + Duration::from_secs(seconds);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = rows
        .into_iter()
        .map(|id| {
            let (pool, done) = (pool.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let recorded = sqlx::query(
                        "WITH d AS (UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = now()
                                    WHERE id = $1 RETURNING id, tenant_id)
                         INSERT INTO webhook_attempts (id, tenant_id, delivery_id, attempted_at, http_status, latency_ms)
                         SELECT gen_random_uuid(), tenant_id, id, now(), 200, 1 FROM d",
                    )
                    .bind(id)
                    .execute(&pool)
                    .await;
                    if recorded.is_ok() {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / seconds as f64
}

async fn succeeded(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn webhooks_bench_deliveries() {
    let events = env_u64("BENCH_EVENTS", 20_000);
    let rate = env_u64("BENCH_RATE", 200);
    let seconds = env_u64("BENCH_SECONDS", 10);
    let endpoints = env_u64("BENCH_ENDPOINTS", 4);
    let (pool, admin_url, db_name) = fresh_database().await;
    let app = spawn_app_with(pool.clone(), |c| c.automation_allow_private_networks = true).await;
    let receiver = Receiver::start().await;
    // The defaults but the schedule's first delay (none) and the endpoint
    // limits, raised so one worker can saturate a few endpoints.
    let worker = worker_with(&app, |c| {
        c.webhooks.retry_schedule = shared::webhooks::RetrySchedule::default();
        c.webhooks.timeout = Duration::from_secs(15);
        c.webhooks.poll_interval = Duration::from_millis(20);
        c.webhooks.endpoint_concurrency = 64;
        c.webhooks.endpoint_queue = 1024;
    })
    .await;
    let mut tenants = Vec::new();
    for n in 0..endpoints {
        let tenant = app.create_tenant(&format!("Bench {n}")).await;
        let (endpoint_id, _) = endpoint(
            &app,
            tenant,
            &receiver.url(&format!("/t{n}")),
            &["call.ended"],
        )
        .await;
        tenants.push((tenant, endpoint_id));
    }

    // Saturation: the events recorded in one transaction, then delivered,
    // timed from its commit.
    let per_tenant = (events / endpoints).max(1);
    let recording = Instant::now();
    let mut tx = pool.begin().await.expect("tx");
    for (tenant, _) in &tenants {
        sqlx::query(
            "SELECT record_webhook_event($1, 'call.ended', jsonb_build_object('n', g)) FROM generate_series(1, $2::int) g",
        )
        .bind(tenant)
        .bind(i32::try_from(per_tenant).expect("events"))
        .execute(&mut *tx)
        .await
        .expect("record");
    }
    tx.commit().await.expect("commit");
    let recorded_in = recording.elapsed();
    let started = Instant::now();
    let total = (per_tenant * endpoints) as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    while succeeded(&pool).await < total {
        assert!(Instant::now() < deadline, "saturation run did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saturation_elapsed = started.elapsed();
    let saturation = total as f64 / saturation_elapsed.as_secs_f64();

    // Latency: one event every 1/rate s, open loop, each timed from its
    // commit to its arrival at the receiver.
    let latency_total = rate * seconds;
    let mut recorded_at: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = Vec::new();
    for i in 0..latency_total {
        tick.tick().await;
        let (tenant, _) = tenants[(i % endpoints) as usize];
        let pool = pool.clone();
        pending.push(tokio::spawn(async move {
            let id: Uuid = sqlx::query_scalar("SELECT record_webhook_event($1, 'call.ended', $2)")
                .bind(tenant)
                .bind(json!({"latency": i}))
                .fetch_one(&pool)
                .await
                .expect("record");
            (shared::webhooks::message_id(id), Instant::now())
        }));
    }
    for task in pending {
        let (id, at) = task.await.expect("recorded");
        recorded_at.insert(id, at);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while succeeded(&pool).await < total + latency_total as i64 {
        assert!(Instant::now() < deadline, "latency run did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for n in 0..endpoints {
        for request in receiver.received(&format!("/t{n}")) {
            if let Some(at) = recorded_at.get(&request.webhook_id()) {
                latencies.push(request.at.saturating_duration_since(*at));
            }
        }
    }
    latencies.sort_unstable();

    // The machine's limits, measured now on the same database and receiver.
    let http = http_limit(&receiver, 5).await;
    let (tenant, endpoint_id) = tenants[0];
    let commits = record_limit(&pool, tenant, endpoint_id, 5).await;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "event webhook benchmark: {endpoints} endpoints (one tenant each), release build, 2 vCPUs"
    );
    println!(
        "saturation      : {total} deliveries in {:.2} s = {saturation:.0} deliveries/s from the commit that recorded them (recording took {:.2} s; target >= 2000/s)",
        saturation_elapsed.as_secs_f64(),
        recorded_in.as_secs_f64()
    );
    println!(
        "at {rate}/s for {seconds} s: event-to-delivery p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} timed; target p99 < 50 ms)",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len()
    );
    println!(
        "machine limits  : HTTP POSTs to the receiver {http:.0}/s (64 at once); a delivery's record {commits:.0} commits/s (64 connections)"
    );

    worker.shutdown().await;
    drop(app);
    drop_database(pool, &admin_url, &db_name).await;
    assert_eq!(latencies.len() as u64, latency_total, "every event timed");
}
