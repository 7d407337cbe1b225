//! Pending dispatches past their expiry become `expired` and drop their
//! token. The SQL is the ops job file, so cron users run the same statement.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub const EXPIRE_SQL: &str = include_str!("../../scripts/jobs/expire_runtime_dispatches.sql");

/// Expires due dispatches once; returns how many.
pub async fn expire_once(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::raw_sql(EXPIRE_SQL).execute(pool).await?;
    Ok(done.rows_affected())
}

pub async fn run(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match expire_once(&pool).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("dispatch_dispatches_expired_total").increment(n);
                tracing::info!(expired = n, "expired unclaimed dispatches");
            }
            Err(err) => tracing::warn!(%err, "dispatch expiry failed"),
        }
    }
}
