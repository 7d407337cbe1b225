//! Closes executions whose worker died: any still queued or running past
//! its deadline (plus a grace) is marked failed `worker_lost`, with its
//! `tool.failed` timeline event, so none stays open forever.

use std::time::Duration;

use shared::automation::{ToolError, error_codes};
use shared::tool_executions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// One pass (at most 500 executions; a longer backlog takes more passes);
/// returns how many were closed. The overdue rows are locked and failed in
/// one transaction, so two reapers never take the same execution, and a
/// worker's outcome recorded meanwhile either comes first or finds it
/// closed.
pub async fn reap_once(pool: &PgPool, grace: Duration) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let overdue = tool_executions::lock_overdue(&mut *tx, grace).await?;
    if overdue.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let error = ToolError {
        code: error_codes::WORKER_LOST.into(),
        message: "no worker finished the execution before its deadline".into(),
    };
    let mut reaped = 0;
    for execution in &overdue {
        if tool_executions::fail_open(&mut *tx, execution, &error, None).await? {
            reaped += 1;
        }
    }
    tx.commit().await?;
    Ok(reaped)
}

pub async fn run(pool: PgPool, interval: Duration, grace: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match reap_once(&pool, grace).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!("automation_executions_reaped_total").increment(n);
                tracing::warn!(count = n, "executions marked worker_lost");
            }
            Err(err) => tracing::error!(error = %err, "reaper pass failed"),
        }
    }
}
