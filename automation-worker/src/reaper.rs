//! Closes executions whose worker died: any still queued or running past
//! its deadline (plus a grace) is marked failed `worker_lost`, with its
//! `tool.failed` timeline event, so none stays open forever.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const REAP_SQL: &str = "
WITH lost AS (
    UPDATE tool_executions te
    SET status = 'failed', error_code = 'worker_lost',
        error_message = 'no worker finished the execution before its deadline',
        finished_at = now()
    WHERE te.id IN (
        SELECT id FROM tool_executions
        WHERE status IN ('queued', 'running') AND deadline_at < now() - make_interval(secs => $1)
        ORDER BY deadline_at
        LIMIT 500
        FOR UPDATE SKIP LOCKED)
    RETURNING te.id, te.tenant_id, te.call_id, te.tool_id, te.trace_id, te.attempts),
events AS (
INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, trace_id)
SELECT gen_random_uuid(), tenant_id, call_id, 'tool.failed', 'tool:' || id || ':failed',
       jsonb_build_object('execution_id', id, 'tool_id', tool_id, 'status', 'failed',
                          'attempts', attempts,
                          'error', jsonb_build_object('code', 'worker_lost',
                              'message', 'no worker finished the execution before its deadline')),
       trace_id
FROM lost
ON CONFLICT (call_id, idempotency_key) DO NOTHING)
SELECT count(*) FROM lost";

/// One pass; returns how many executions were closed.
pub async fn reap_once(pool: &PgPool, grace: Duration) -> Result<u64, sqlx::Error> {
    let reaped: i64 = sqlx::query_scalar(REAP_SQL)
        .bind(grace.as_secs_f64())
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(reaped).unwrap_or(0))
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
