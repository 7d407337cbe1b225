//! Keeps the KPI rollups computed (`shared::kpi_rollups`): every
//! `KPI_ROLLUP_INTERVAL`, each tenant's hours that are over and the hours
//! marked dirty since. A tenant with a long history (an import, or a
//! deployment that ran without this task) catches up a week per
//! transaction. The KPIs are exact meanwhile: what is not computed is read
//! from the rows.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub async fn run(pool: PgPool, interval: Duration, shutdown: CancellationToken) {
    // A long catch-up stops with the worker; its open transaction is rolled
    // back and the next start goes on from the last commit.
    crate::periodic::every(interval, shutdown, || async {
        let started = std::time::Instant::now();
        match shared::kpi_rollups::compact(&pool).await {
            Ok(done) => {
                metrics::histogram!("kpi_rollup_seconds").record(started.elapsed());
                metrics::counter!("kpi_rollup_hours_total").increment(done.hours as u64);
                if done.marks > 0 {
                    tracing::debug!(?done, "kpi rollups computed");
                }
            }
            Err(err) => {
                tracing::warn!(%err, "computing kpi rollups failed; the kpis read the rows meanwhile");
            }
        }
    })
    .await;
}
