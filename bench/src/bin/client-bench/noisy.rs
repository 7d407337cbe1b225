//! `client-bench noisy`: a noisy tenant against a quiet one.
//!
//! Tenant A (the data set's big tenant) runs `readers` concurrent full-year
//! KPI requests in a closed loop while tenant B claims runtime dispatches
//! and executes tools at a fixed arrival rate (open loop, half each). B runs
//! the same load alone first: its p99 then is the baseline the noisy phase
//! is compared with, measured in the same run on the same machine. B's tool
//! calls go through the automation-worker to an n8n stand-in served by this
//! process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde_json::json;
use shared::auth::{JwtKeys, Role};
use shared::crypto::SecretBox;
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{BIG, load_average, ms, percentile};

pub struct Settings {
    pub api_url: String,
    pub duration: Duration,
    pub readers: usize,
    pub rate: u32,
}

/// Tenant B's fixtures: a tool routed to the stand-in, a call to run it for,
/// and pending dispatches to claim.
struct QuietTenant {
    tenant_id: Uuid,
    tool_id: Uuid,
    call_id: Uuid,
    dispatches: Mutex<Vec<Uuid>>,
}

/// What one phase of B's load saw.
#[derive(Default)]
struct Observed {
    latencies: Vec<Duration>,
    unavailable: usize,
    other_failures: usize,
}

pub async fn run(
    pool: &PgPool,
    keys: &JwtKeys,
    secrets: &SecretBox,
    settings: Settings,
) -> anyhow::Result<()> {
    let big: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(BIG)
        .fetch_one(pool)
        .await
        .context("no data set: run `client-bench load` first")?;
    let n8n = start_n8n().await?;
    let claims_needed = (settings.rate as usize) * settings.duration.as_secs() as usize + 100;
    let quiet = Arc::new(seed_quiet_tenant(pool, secrets, &n8n, claims_needed).await?);
    let hour = Duration::from_secs(3600);
    let a_token = keys.issue("noisy-a", big, Role::ClientViewer, false, hour)?;
    let b_token = keys.issue(
        "quiet-b",
        quiet.tenant_id,
        Role::InternalOperator,
        true,
        hour,
    )?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()?;

    println!(
        "machine: {} cpus, load average {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average()
    );
    println!(
        "tenant B: {}/s (half claims, half tool executions) for {:?} per phase; tenant A: {} concurrent full-year KPI reads",
        settings.rate, settings.duration, settings.readers
    );
    // Warm both paths (schema cache, connections) before anything counts.
    let _ = quiet_load(&client, &settings, &quiet, &b_token, Duration::from_secs(2)).await;

    let idle = quiet_load(&client, &settings, &quiet, &b_token, settings.duration).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let now = Utc::now();
    let kpis = format!(
        "{}/client/kpis?from={}&to={}",
        settings.api_url,
        (now - chrono::Duration::days(366)).format("%Y-%m-%dT%H:%M:%SZ"),
        now.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let readers: Vec<_> = (0..settings.readers)
        .map(|_| {
            let (client, url, token, stop) =
                (client.clone(), kpis.clone(), a_token.clone(), stop.clone());
            tokio::spawn(async move {
                let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, retry_after) =
                        match client.get(&url).bearer_auth(&token).send().await {
                            Ok(resp) => (resp.status().as_u16(), retry_after(&resp)),
                            Err(_) => (0, None),
                        };
                    *statuses.entry(status).or_default() += 1;
                    // As a client honouring Retry-After would.
                    if let Some(wait) = retry_after {
                        tokio::time::sleep(wait).await;
                    }
                }
                statuses
            })
        })
        .collect();
    let noisy = quiet_load(&client, &settings, &quiet, &b_token, settings.duration).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut a_statuses = std::collections::BTreeMap::<u16, usize>::new();
    for reader in readers {
        for (status, n) in reader.await? {
            *a_statuses.entry(status).or_default() += n;
        }
    }

    println!(
        "{:<28} {:>8} {:>9} {:>9} {:>6} {:>7}",
        "tenant B", "requests", "p50 ms", "p99 ms", "503s", "other"
    );
    for (name, seen) in [("alone", &idle), ("beside noisy tenant A", &noisy)] {
        println!(
            "{name:<28} {:>8} {:>9.1} {:>9.1} {:>6} {:>7}",
            seen.latencies.len() + seen.unavailable + seen.other_failures,
            ms(percentile(&seen.latencies, 0.50)),
            ms(percentile(&seen.latencies, 0.99)),
            seen.unavailable,
            seen.other_failures
        );
    }
    let ratio =
        ms(percentile(&noisy.latencies, 0.99)) / ms(percentile(&idle.latencies, 0.99)).max(0.001);
    println!("tenant B p99 beside A / alone: {ratio:.2}x (target: at most 2x, and no 503)");
    println!("tenant A's reads by status: {a_statuses:?}");
    println!("load average after: {}", load_average());
    n8n.abort();
    Ok(())
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// B's open-loop load for `duration`: requests start on schedule whether or
/// not earlier ones finished, so a slow server shows as latency.
async fn quiet_load(
    client: &reqwest::Client,
    settings: &Settings,
    quiet: &Arc<QuietTenant>,
    token: &str,
    duration: Duration,
) -> Observed {
    let interval = Duration::from_secs_f64(1.0 / f64::from(settings.rate.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while started.elapsed() < duration {
        let due = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        let (client, quiet, token, base) = (
            client.clone(),
            quiet.clone(),
            token.to_owned(),
            settings.api_url.clone(),
        );
        let claim = n.is_multiple_of(2);
        tasks.push(tokio::spawn(async move {
            let request = if claim {
                let dispatch_id = quiet.dispatches.lock().await.pop()?;
                client
                    .post(format!("{base}/internal/runtime/dispatches/claim"))
                    .json(&json!({"dispatch_id": dispatch_id}))
            } else {
                client
                    .post(format!(
                        "{base}/internal/automation/tools/{}/execute",
                        quiet.tool_id
                    ))
                    .json(&json!({"call_id": quiet.call_id, "input_json": {"n": 1}}))
            };
            let sent = Instant::now();
            let status = request
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16());
            Some((status, sent.elapsed()))
        }));
        n += 1;
    }
    let mut seen = Observed::default();
    for task in tasks {
        match task.await {
            Ok(Some((Ok(status), took))) if (200..300).contains(&status) => {
                seen.latencies.push(took)
            }
            Ok(Some((Ok(503), _))) => seen.unavailable += 1,
            Ok(Some(_)) | Err(_) => seen.other_failures += 1,
            Ok(None) => {}
        }
    }
    seen.latencies.sort_unstable();
    seen
}

/// n8n's part: answers every webhook at once.
struct N8n {
    base: String,
    server: tokio::task::JoinHandle<()>,
}

impl N8n {
    fn abort(&self) {
        self.server.abort();
    }
}

async fn start_n8n() -> anyhow::Result<N8n> {
    let app = axum::Router::new().fallback(|| async { axum::Json(json!({"ok": true})) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(N8n { base, server })
}

async fn seed_quiet_tenant(
    pool: &PgPool,
    secrets: &SecretBox,
    n8n: &N8n,
    dispatches: usize,
) -> anyhow::Result<QuietTenant> {
    let tenant_id = Uuid::now_v7();
    let (agent_id, version_id, call_id) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (integration_id, tool_id) = (Uuid::now_v7(), Uuid::now_v7());
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
        .bind(tenant_id)
        .bind(format!("noisy-bench-quiet-{}", tenant_id.simple()))
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO agents (id, tenant_id, name) VALUES ($1, $2, 'desk')")
        .bind(agent_id)
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO agent_versions (id, tenant_id, agent_id, version, config) VALUES ($1, $2, $3, 1, '{}')",
    )
    .bind(version_id)
    .bind(tenant_id)
    .bind(agent_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO call_sessions (id, tenant_id, call_sid, agent_id, agent_version_id, status)
         VALUES ($1, $2, $3, $4, $5, 'in-progress')",
    )
    .bind(call_id)
    .bind(tenant_id)
    .bind(format!("CA{}", call_id.simple()))
    .bind(agent_id)
    .bind(version_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO integrations (id, tenant_id, base_url, auth_type, secret_aad_version)
         VALUES ($1, $2, $3, 'none', 2)",
    )
    .bind(integration_id)
    .bind(tenant_id)
    .bind(&n8n.base)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO tools (id, tenant_id, name, description, input_schema)
         VALUES ($1, $2, 'lookup', '', '{\"type\": \"object\"}')",
    )
    .bind(tool_id)
    .bind(tenant_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO tool_endpoints (id, tenant_id, tool_id, integration_id, webhook_path, method, timeout_ms, max_retries)
         VALUES ($1, $2, $3, $4, 'lookup', 'POST', 5000, 0)",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(tool_id)
    .bind(integration_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO agent_version_tools (tenant_id, agent_version_id, tool_id) VALUES ($1, $2, $3)",
    )
    .bind(tenant_id)
    .bind(version_id)
    .bind(tool_id)
    .execute(&mut *tx)
    .await?;
    let mut ids = Vec::with_capacity(dispatches);
    for _ in 0..dispatches {
        let (call, dispatch) = (Uuid::now_v7(), Uuid::now_v7());
        let sealed = secrets.seal(
            &shared::crypto::random_bytes::<32>(),
            &shared::calls::join_token_aad(dispatch),
        )?;
        sqlx::query("INSERT INTO call_sessions (id, tenant_id, call_sid) VALUES ($1, $2, $3)")
            .bind(call)
            .bind(tenant_id)
            .bind(format!("CA{}", call.simple()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO runtime_dispatches (id, tenant_id, call_id, status, join_token_ciphertext,
                 join_token_nonce, join_token_key_id, expires_at)
             VALUES ($1, $2, $3, 'pending', $4, $5, $6, now() + interval '1 hour')",
        )
        .bind(dispatch)
        .bind(tenant_id)
        .bind(call)
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .execute(&mut *tx)
        .await?;
        ids.push(dispatch);
    }
    tx.commit().await?;
    Ok(QuietTenant {
        tenant_id,
        tool_id,
        call_id,
        dispatches: Mutex::new(ids),
    })
}
