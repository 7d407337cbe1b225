//! Purges each tenant's calls past its retention (`shared::retention`),
//! every `RETENTION_PURGE_INTERVAL`; when several instances run, one of
//! them does it and the others skip the round. Each round also resumes
//! any tenant off-boarding that did not finish (`shared::offboarding`; the
//! api starts them, this picks up one whose api went away).

use std::time::Duration;

use shared::retention::Pace;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub async fn run(pool: PgPool, interval: Duration, pace: Pace, shutdown: CancellationToken) {
    crate::periodic::every(interval, shutdown, || async {
        let started = std::time::Instant::now();
        match shared::retention::purge(&pool, pace).await {
            Ok(run) if run.skipped => {}
            Ok(run) => {
                metrics::histogram!("retention_purge_seconds").record(started.elapsed());
                let calls: i64 = run.tenants.iter().map(|(_, purged)| purged.calls).sum();
                metrics::counter!("retention_purged_calls_total")
                    .increment(u64::try_from(calls).unwrap_or(0));
                if calls > 0 {
                    tracing::info!(calls, tenants = run.tenants.len(), "retention purge");
                }
            }
            Err(err) => tracing::warn!(%err, "retention purge failed; the next run goes on"),
        }
        if let Err(err) = resume_offboardings(&pool, pace).await {
            tracing::warn!(%err, "resuming off-boardings failed; the next run goes on");
        }
    })
    .await;
}

async fn resume_offboardings(pool: &PgPool, pace: Pace) -> Result<(), sqlx::Error> {
    for tenant_id in shared::offboarding::unfinished(pool).await? {
        if shared::offboarding::run(pool, tenant_id, pace).await? {
            tracing::info!(%tenant_id, "tenant off-boarded");
        }
    }
    Ok(())
}
