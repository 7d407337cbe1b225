//! `client-bench`: the benchmark of the client read API.
//!
//! `client-bench load` fills a database with one tenant of `--big-calls`
//! calls (default 1,000,000) and 10 tenants of 100,000 (spread over the
//! last 365 days, about one call in five with a tool execution), with
//! `INSERT ... SELECT generate_series`. `client-bench rollups` computes the
//! KPI rollups (or `--drop`s them); `client-bench measure` times, over HTTP
//! against a running api, sequential requests of the big tenant: the KPIs
//! of 1, 30 and 366 days, the first page of the calls list and a deep page
//! (a cursor 90 % down), and the search, and prints p50/p99.
//! `scripts/bench-client-api.sh` runs them around a release build of the
//! api. `client-bench noisy` (module [`noisy`]) runs a noisy tenant's reads
//! beside a quiet tenant's runtime work.

mod noisy;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use api::http::pagination::Cursor;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use shared::auth::{JwtKeys, Role};
use shared::config::{AuthArgs, CommonArgs, DbArgs, EncryptionArgs};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

const BIG: &str = "bench-big";

#[derive(Debug, Parser)]
#[command(name = "client-bench", about = "Benchmark of the client read API")]
struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    auth: AuthArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate and load the data set (skipped when already loaded).
    Load {
        #[arg(long, default_value_t = 1_000_000)]
        big_calls: i64,
        #[arg(long, default_value_t = 10)]
        small_tenants: i64,
        #[arg(long, default_value_t = 100_000)]
        small_calls: i64,
    },
    /// Compute the KPI rollups of every tenant (what the dispatch-worker
    /// does on its schedule), timed; or, with `--drop`, delete them all so
    /// every KPI is read from the rows.
    Rollups {
        #[arg(long)]
        drop: bool,
    },
    /// Time the endpoints of a running api.
    Measure {
        /// Base URL of the api, e.g. http://127.0.0.1:4100.
        #[arg(long)]
        api_url: String,
        /// Timed requests per endpoint (after 10 warm-up requests).
        #[arg(long, default_value_t = 300)]
        samples: usize,
        /// Only the KPIs, each with a tenth of the samples (at least 10;
        /// a full year with 5): for the pass that reads them from the rows.
        #[arg(long)]
        kpis_only: bool,
        /// Printed above the table.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Tenant A's full-year KPI reads beside tenant B's claims and tool
    /// executions, against a running api and automation-worker.
    Noisy {
        /// Base URL of the api.
        #[arg(long)]
        api_url: String,
        /// Length of each phase (B alone, then B beside A).
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Tenant A's concurrent KPI requests.
        #[arg(long, default_value_t = 50)]
        readers: usize,
        /// Tenant B's requests per second (half claims, half executions).
        #[arg(long, default_value_t = 50)]
        rate: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::install_crypto_providers();
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.db.database_url)
        .await
        .context("connect to DATABASE_URL")?;
    match args.command {
        Command::Load {
            big_calls,
            small_tenants,
            small_calls,
        } => load(&pool, big_calls, small_tenants, small_calls).await,
        Command::Rollups { drop } => rollups(&pool, drop).await,
        Command::Measure {
            api_url,
            samples,
            kpis_only,
            label,
        } => {
            let secret = args.auth.secret(&args.common)?;
            let keys = JwtKeys::new(&secret, &args.auth.jwt_issuer, &args.auth.jwt_audience);
            let settings = MeasureSettings {
                samples,
                kpis_only,
                label,
            };
            measure(&pool, &keys, &api_url, &settings).await
        }
        Command::Noisy {
            api_url,
            duration,
            readers,
            rate,
        } => {
            let secret = args.auth.secret(&args.common)?;
            let keys = JwtKeys::new(&secret, &args.auth.jwt_issuer, &args.auth.jwt_audience);
            let secrets = shared::crypto::SecretBox::new(&args.encryption.key(&args.common)?);
            let settings = noisy::Settings {
                api_url,
                duration,
                readers,
                rate,
            };
            noisy::run(&pool, &keys, &secrets, settings).await
        }
    }
}

async fn load(pool: &PgPool, big: i64, small_tenants: i64, small: i64) -> anyhow::Result<()> {
    shared::db::migrate(pool).await?;
    let expected = big + small_tenants * small;
    let loaded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_sessions c JOIN tenants t ON t.id = c.tenant_id
         WHERE t.name LIKE 'bench-%'",
    )
    .fetch_one(pool)
    .await?;
    if loaded == expected {
        println!("data set already loaded ({loaded} calls)");
        return Ok(());
    }
    ensure!(
        loaded == 0,
        "a partial data set ({loaded} calls) is present: drop the database first"
    );
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    // Bulk load: the generated rows are consistent by construction, so the
    // foreign-key triggers are skipped (needs a superuser, as in local dev).
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT setseed(0.42)")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO tenants (id, name)
         SELECT gen_random_uuid(), 'bench-big'
         UNION ALL
         SELECT gen_random_uuid(), 'bench-small-' || lpad(i::text, 3, '0')
         FROM generate_series(1, $1) AS i",
    )
    .bind(small_tenants)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO agents (id, tenant_id, name)
         SELECT gen_random_uuid(), t.id, 'agent-' || a
         FROM tenants t, generate_series(1, 5) AS a WHERE t.name LIKE 'bench-%'",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO tools (id, tenant_id, name, input_schema)
         SELECT gen_random_uuid(), id, 'lookup', '{}' FROM tenants WHERE name LIKE 'bench-%'",
    )
    .execute(&mut *conn)
    .await?;
    // The search index is built once after the load: a GIN index takes
    // millions of rows far faster in one build than row by row.
    let search_index: Option<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index
         WHERE indexrelid = to_regclass('call_sessions_numbers_trgm_idx')",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if search_index.is_some() {
        sqlx::query("DROP INDEX call_sessions_numbers_trgm_idx")
            .execute(&mut *conn)
            .await?;
    }
    println!("loading {expected} calls...");
    // Calls of all tenants interleaved in time order, as they would arrive;
    // 90% inbound; 74.5% completed (80% of those with Twilio's CallDuration).
    sqlx::query(
        "INSERT INTO call_sessions (id, tenant_id, call_sid, agent_id, from_number, to_number,
             direction, status, started_at, answered_at, ended_at, duration_seconds,
             created_at, updated_at)
         SELECT gen_random_uuid(), tenant_id, 'CA' || md5('bench' || idx || '_' || n),
                agents[1 + (n % 5)::int],
                '+1415' || lpad(((n * 7919) % 10000000)::text, 7, '0'),
                '+1800555' || lpad(idx::text, 4, '0'),
                CASE WHEN r2 < 0.9 THEN 'inbound' ELSE 'outbound-api' END,
                status, started_at,
                CASE WHEN status IN ('completed', 'in-progress')
                     THEN started_at + make_interval(secs => ring) END,
                CASE WHEN status = 'completed' THEN started_at + make_interval(secs => ring + talk)
                     WHEN status = 'in-progress' THEN NULL
                     ELSE started_at + make_interval(secs => ring + 20) END,
                CASE WHEN status = 'completed' AND r2 < 0.8 THEN talk
                     WHEN status IN ('busy', 'no-answer', 'failed', 'canceled') THEN 0 END,
                started_at, started_at
         FROM (
             SELECT t.tenant_id, t.idx, t.agents, n,
                    $3::timestamptz - ((t.n_calls - n)::float8 / t.n_calls) * interval '365 days'
                        AS started_at,
                    CASE WHEN r1 < 0.70 THEN 'completed' WHEN r1 < 0.78 THEN 'no-answer'
                         WHEN r1 < 0.84 THEN 'busy' WHEN r1 < 0.88 THEN 'failed'
                         WHEN r1 < 0.92 THEN 'canceled' WHEN r1 < 0.995 THEN 'completed'
                         ELSE 'in-progress' END AS status,
                    r2, 2 + floor(r3 * 20)::int AS ring, 20 + floor(r4 * 580)::int AS talk
             FROM (
                 -- random() in a select list runs once per row.
                 SELECT t.tenant_id, t.idx, t.agents, t.n_calls, n,
                        random() AS r1, random() AS r2, random() AS r3, random() AS r4
                 FROM (
                     SELECT tn.id AS tenant_id,
                            row_number() OVER (ORDER BY tn.name) AS idx,
                            CASE WHEN tn.name = 'bench-big' THEN $1 ELSE $2 END AS n_calls,
                            (SELECT array_agg(a.id ORDER BY a.name) FROM agents a
                             WHERE a.tenant_id = tn.id) AS agents
                     FROM tenants tn WHERE tn.name LIKE 'bench-%'
                 ) AS t
                 CROSS JOIN LATERAL generate_series(1::bigint, t.n_calls) AS n
             ) AS t
         ) AS s
         ORDER BY started_at",
    )
    .bind(big)
    .bind(small)
    .bind(Utc::now())
    .execute(&mut *conn)
    .await?;
    println!(
        "calls loaded in {:.0?}; tool executions...",
        started.elapsed()
    );
    sqlx::query(
        "INSERT INTO tool_executions (id, tenant_id, call_id, tool_id, trace_id, status, input,
             output, attempts, latency_ms, deadline_at, created_at, started_at, finished_at)
         SELECT gen_random_uuid(), tenant_id, id, tool_id, 'bench',
                CASE WHEN r < 0.93 THEN 'succeeded' ELSE 'failed' END,
                '{}', '{}', 1, lat, answered_at + interval '40 seconds',
                answered_at + interval '10 seconds', answered_at + interval '10 seconds',
                answered_at + interval '10 seconds' + make_interval(secs => lat / 1000.0)
         FROM (
             SELECT c.tenant_id, c.id, c.answered_at, c.started_at, tl.id AS tool_id,
                    random() AS r, 50 + floor(random() * 1500)::int AS lat
             FROM call_sessions c
             JOIN tools tl ON tl.tenant_id = c.tenant_id
             WHERE c.status = 'completed' AND (hashtext(c.call_sid) & 3) = 0
         ) AS c
         ORDER BY c.started_at",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("RESET session_replication_role")
        .execute(&mut *conn)
        .await?;
    if let Some(definition) = search_index {
        println!("building the search index...");
        sqlx::query("SET maintenance_work_mem = '1GB'")
            .execute(&mut *conn)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(definition))
            .execute(&mut *conn)
            .await?;
    }
    println!("vacuum analyze...");
    for table in [
        "call_sessions",
        "tool_executions",
        "agents",
        "tenants",
        "tools",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {table}")))
            .execute(&mut *conn)
            .await?;
    }
    let executions: i64 = sqlx::query_scalar("SELECT count(*) FROM tool_executions")
        .fetch_one(&mut *conn)
        .await?;
    println!(
        "loaded {expected} calls and {executions} tool executions in {:.0?}",
        started.elapsed()
    );
    Ok(())
}

/// Deletes the KPI rollups (every read then comes from the rows), or
/// computes them all as the dispatch-worker would, timed.
async fn rollups(pool: &PgPool, drop: bool) -> anyhow::Result<()> {
    if drop {
        sqlx::query("TRUNCATE kpi_counts, kpi_histograms, kpi_rollup_progress, kpi_dirty_hours")
            .execute(pool)
            .await?;
        println!("kpi rollups dropped: every KPI is read from the rows");
        return Ok(());
    }
    let started = Instant::now();
    let done = shared::kpi_rollups::compact(pool).await?;
    let (counts, histograms, values): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM kpi_counts), (SELECT count(*) FROM kpi_histograms),
                (SELECT COALESCE(sum(cardinality(vals)), 0)::int8 FROM kpi_histograms)",
    )
    .fetch_one(pool)
    .await?;
    println!(
        "kpi rollups computed in {:.1?}: {} tenants, {} hours; {counts} count rows (quarters, hours, days), \
         {histograms} distributions holding {values} values",
        started.elapsed(),
        done.tenants,
        done.hours
    );
    Ok(())
}

struct MeasureSettings {
    samples: usize,
    kpis_only: bool,
    label: String,
}

async fn measure(
    pool: &PgPool,
    keys: &JwtKeys,
    api_url: &str,
    settings: &MeasureSettings,
) -> anyhow::Result<()> {
    let samples = settings.samples;
    let tenant_id: Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(BIG)
        .fetch_one(pool)
        .await
        .context("no data set: run `client-bench load` first")?;
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM call_sessions WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(pool)
        .await?;
    let deep_offset = calls * 9 / 10;
    let (at, id): (DateTime<Utc>, Uuid) = sqlx::query_as(
        "SELECT started_at, id FROM call_sessions WHERE tenant_id = $1
         ORDER BY started_at DESC, id DESC OFFSET $2 LIMIT 1",
    )
    .bind(tenant_id)
    .bind(deep_offset)
    .fetch_one(pool)
    .await?;
    let deep_cursor = Cursor { at, id }.encode();
    let agent_id: Uuid =
        sqlx::query_scalar("SELECT id FROM agents WHERE tenant_id = $1 ORDER BY name LIMIT 1")
            .bind(tenant_id)
            .fetch_one(pool)
            .await?;
    let token = keys.issue(
        "client-bench",
        tenant_id,
        Role::ClientViewer,
        false,
        Duration::from_secs(3600),
    )?;
    // A year read from the rows alone of a 10-million-call tenant takes
    // tens of seconds (CLIENT_READ_STATEMENT_TIMEOUT is raised to match).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let now = Utc::now();
    let days_ago = |d: i64| (now - chrono::Duration::days(d)).format("%Y-%m-%dT%H:%M:%SZ");
    let to = now.format("%Y-%m-%dT%H:%M:%SZ");
    let kpi = |days: i64| format!("/client/kpis?from={}&to={to}", days_ago(days));
    let (kpi_1, kpi_30, kpi_366) = (kpi(1), kpi(30), kpi(366));
    let kpi_30_agent = format!("{kpi_30}&agent_id={agent_id}");
    let kpi_30_tz = format!("{kpi_30}&tz=Asia%2FKolkata");
    let kpi_366_agent = format!("{kpi_366}&agent_id={agent_id}");
    let first = "/client/calls?limit=50".to_owned();
    // Searches: the last 7 digits of one caller (a hit: a handful of
    // calls), a London number no call has (a miss), the tenant's own number
    // that every call was made to (matches them all), and a CallSid.
    let (caller, call_sid): (String, String) = sqlx::query_as(
        "SELECT from_number, call_sid FROM call_sessions WHERE tenant_id = $1
         ORDER BY started_at LIMIT 1 OFFSET $2",
    )
    .bind(tenant_id)
    .bind(calls / 2)
    .fetch_one(pool)
    .await?;
    let callee: String =
        sqlx::query_scalar("SELECT to_number FROM call_sessions WHERE tenant_id = $1 LIMIT 1")
            .bind(tenant_id)
            .fetch_one(pool)
            .await?;
    let hit_digits = &caller[caller.len().saturating_sub(7)..];
    let search_hit = format!("/client/calls?q={hit_digits}");
    let search_miss = "/client/calls?q=%2B442079460958".to_owned();
    let search_all = format!("/client/calls?q={}", callee.replace('+', "%2B"));
    let search_sid = format!("/client/calls?q={call_sid}");
    let (hits, _) = get(&client, api_url, &search_hit, &token).await?;
    let (misses, _) = get(&client, api_url, &search_miss, &token).await?;
    ensure!(
        hits["items"].as_array().is_some_and(|i| !i.is_empty())
            && misses["items"].as_array().is_some_and(Vec::is_empty),
        "the search hit must find calls and the miss none"
    );
    let deep = format!("/client/calls?limit=50&cursor={deep_cursor}");

    let (kpis_in_30d, _) = get(&client, api_url, &kpi_30, &token).await?;
    let (kpis_in_366d, _) = get(&client, api_url, &kpi_366, &token).await?;
    println!(
        "366 days: {} calls, {} tool executions, duration p50/p95 {}/{} s, tool p95 {} ms",
        kpis_in_366d["calls"]["total"],
        kpis_in_366d["tools"]["executions_total"],
        kpis_in_366d["duration"]["p50_seconds"],
        kpis_in_366d["duration"]["p95_seconds"],
        kpis_in_366d["tools"]["p95_latency_ms"],
    );
    println!(
        "tenant {tenant_id}: {calls} calls; 30-day window holds {} calls; deep page starts \
         {deep_offset} calls down",
        kpis_in_30d["calls"]["total"]
    );
    if !settings.label.is_empty() {
        println!("-- {}", settings.label);
    }
    println!("machine: {} cpus, load average {}", cpus(), load_average());
    println!(
        "{:<34} {:>8} {:>10} {:>10}",
        "endpoint", "samples", "p50 ms", "p99 ms"
    );
    let few = (samples / 10).max(20);
    let endpoints: Vec<(&str, &String, usize)> = if settings.kpis_only {
        let rows = (samples / 10).max(10);
        vec![
            ("kpis 1 day", &kpi_1, rows),
            ("kpis 30 days", &kpi_30, rows),
            ("kpis 30 days, tz=Asia/Kolkata", &kpi_30_tz, rows),
            ("kpis 30 days, agent_id", &kpi_30_agent, rows),
            ("kpis 366 days", &kpi_366, 5),
        ]
    } else {
        vec![
            ("kpis 1 day", &kpi_1, samples),
            ("kpis 30 days", &kpi_30, samples),
            ("kpis 366 days", &kpi_366, samples),
            ("kpis 30 days, tz=Asia/Kolkata", &kpi_30_tz, few),
            ("kpis 30 days, agent_id", &kpi_30_agent, few),
            ("kpis 366 days, agent_id", &kpi_366_agent, few),
            ("GET /client/calls (first page)", &first, samples),
            ("GET /client/calls (deep page)", &deep, samples),
            ("calls ?q= caller digits (hit)", &search_hit, samples),
            ("calls ?q= digits (miss)", &search_miss, samples),
            ("calls ?q= callee (every call)", &search_all, few),
            ("calls ?q= CallSid", &search_sid, few),
        ]
    };
    // Reads from the rows of a big tenant take seconds: fewer warm-ups.
    let warm_up = if settings.kpis_only { 2 } else { 10 };
    for (name, path, n) in endpoints {
        let mut times = Vec::with_capacity(n);
        for i in 0..n + warm_up {
            let (_, took) = get(&client, api_url, path, &token).await?;
            if i >= warm_up {
                times.push(took);
            }
        }
        times.sort_unstable();
        println!(
            "{name:<34} {n:>8} {:>10.1} {:>10.1}",
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.99))
        );
    }
    println!("load average after: {}", load_average());
    Ok(())
}

/// The machine is shared; the figures mean little without its load.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, usize::from)
}

async fn get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
) -> anyhow::Result<(serde_json::Value, Duration)> {
    let started = Instant::now();
    let resp = client
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await?;
    let status = resp.status();
    let body = resp.bytes().await?;
    let took = started.elapsed();
    ensure!(
        status.is_success(),
        "{path}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok((serde_json::from_slice(&body)?, took))
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
