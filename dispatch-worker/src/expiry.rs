//! What expires: pending dispatches past their expiry become `expired` and
//! drop their token, and their calls stop counting against the tenant's
//! concurrent-call limit; calls still counted after `MAX_CALL_DURATION` (an
//! end that never reached us) stop counting too. The SQL is the ops job
//! files', so cron users run the same statements. Each round also recounts
//! the live-call counters admission reads, and refreshes the live-call
//! gauges.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const EXPIRE_SQL: &str = include_str!("../../scripts/jobs/expire_runtime_dispatches.sql");

/// Tenants with a gauge of their own; the rest are summed under `other`, so
/// the label set stays bounded however many tenants there are.
const LIVE_GAUGE_TENANTS: usize = 20;

/// What one expiry round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Expired {
    /// Dispatches expired.
    pub expired: i64,
    /// Of their calls, those that stopped counting against a limit.
    pub released: i64,
}

/// Expires due dispatches once.
pub async fn expire_once(pool: &PgPool) -> Result<Expired, sqlx::Error> {
    sqlx::query_as(EXPIRE_SQL).fetch_one(pool).await
}

/// Releases calls counted for longer than `max_call_duration`; returns how
/// many.
pub async fn release_overdue_once(
    pool: &PgPool,
    max_call_duration: Duration,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT release_overdue_calls(make_interval(secs => $1))")
        .bind(max_call_duration.as_secs_f64())
        .fetch_one(pool)
        .await
}

/// Recounts the live-call counters admission reads (migration 0024) of
/// every tenant with a limit on it or on one of its agents, one tenant per
/// transaction; returns how many counters were off.
pub async fn recount_live_calls_once(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let tenants: Vec<Uuid> = sqlx::query_scalar(
        "SELECT t.id FROM tenants t
         WHERE t.max_concurrent_calls IS NOT NULL
            OR EXISTS (SELECT 1 FROM agents a
                       WHERE a.tenant_id = t.id AND a.max_concurrent_calls IS NOT NULL)
         ORDER BY t.id",
    )
    .fetch_all(pool)
    .await?;
    let mut off = 0;
    for tenant in tenants {
        let tenant_off: i32 = sqlx::query_scalar("SELECT recount_live_calls($1)")
            .bind(tenant)
            .fetch_one(pool)
            .await?;
        off += i64::from(tenant_off);
    }
    Ok(off)
}

pub async fn run(
    pool: PgPool,
    interval: Duration,
    max_call_duration: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    let mut gauged = HashSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match expire_once(&pool).await {
            Ok(Expired { expired: 0, .. }) => {}
            Ok(Expired { expired, released }) => {
                metrics::counter!("dispatch_dispatches_expired_total").increment(expired as u64);
                metrics::counter!("calls_released_total", "reason" => "dispatch_expired")
                    .increment(released as u64);
                tracing::info!(expired, released, "expired unclaimed dispatches");
            }
            Err(err) => tracing::warn!(%err, "dispatch expiry failed"),
        }
        match release_overdue_once(&pool, max_call_duration).await {
            Ok(0) => {}
            Ok(released) => {
                metrics::counter!("calls_released_total", "reason" => "max_duration")
                    .increment(released as u64);
                tracing::warn!(
                    released,
                    "calls outlived MAX_CALL_DURATION without an end and stopped counting"
                );
            }
            Err(err) => tracing::warn!(%err, "releasing overdue calls failed"),
        }
        match recount_live_calls_once(&pool).await {
            Ok(0) => {}
            Ok(off) => {
                metrics::counter!("calls_live_counters_corrected_total").increment(off as u64);
                tracing::warn!(off, "live-call counters were off and were recounted");
            }
            Err(err) => tracing::warn!(%err, "recounting live calls failed"),
        }
        if let Err(err) = gauge_live_calls(&pool, &mut gauged).await {
            tracing::warn!(%err, "cannot count live calls");
        }
    }
}

/// `calls_live{tenant}` for the tenants with the most live calls and
/// `calls_live{tenant="other"}` for the rest; a tenant that drops out of
/// the top is set to zero once. The count goes tenant by tenant through
/// `call_sessions_live_idx` (migration 0015 says why).
async fn gauge_live_calls(pool: &PgPool, gauged: &mut HashSet<Uuid>) -> Result<(), sqlx::Error> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT t.id, c.live FROM tenants t
         CROSS JOIN LATERAL (
             SELECT count(*) AS live FROM call_sessions s WHERE s.tenant_id = t.id AND s.live
         ) c
         WHERE c.live > 0
         ORDER BY c.live DESC, t.id",
    )
    .fetch_all(pool)
    .await?;
    let top = rows.len().min(LIVE_GAUGE_TENANTS);
    let now: HashSet<Uuid> = rows[..top].iter().map(|(tenant, _)| *tenant).collect();
    for (tenant, live) in &rows[..top] {
        metrics::gauge!("calls_live", "tenant" => tenant.to_string()).set(*live as f64);
    }
    for gone in gauged.difference(&now) {
        metrics::gauge!("calls_live", "tenant" => gone.to_string()).set(0.0);
    }
    let other: i64 = rows[top..].iter().map(|(_, live)| live).sum();
    metrics::gauge!("calls_live", "tenant" => "other").set(other as f64);
    *gauged = now;
    Ok(())
}
