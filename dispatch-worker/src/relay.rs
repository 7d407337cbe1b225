//! The outbox relay: publishes events the ingress (or this worker) committed
//! but did not get onto JetStream, and publishes again events that were
//! published but never processed. Instances share the work: each round
//! leases its rows (see `DUE_UNPUBLISHED`).

use std::time::Duration;

use async_nats::jetstream;
use shared::calls::OutboxRow;
use shared::nats::Subjects;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Relay {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub publish_after: Duration,
    pub republish_after: Duration,
    pub interval: Duration,
    pub batch: i64,
}

#[derive(sqlx::FromRow)]
pub struct DueRow {
    #[sqlx(flatten)]
    pub row: OutboxRow,
    pub publish_attempts: i32,
}

/// How long a relay instance keeps the rows it took: longer than a round's
/// publishes can take (each waits at most [`ACK_TIMEOUT`]).
const LEASE: Duration = Duration::from_secs(30);
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

// Each query takes its due rows in one short statement: it leases them
// (`relay_lease_until`) rather than holding row locks while the publishes
// wait for acks, so the dispatch-worker's own update of a row never queues
// behind a relay round. `SKIP LOCKED` only skips rows being written at that
// very moment.
const DUE_UNPUBLISHED: &str = "
UPDATE call_events e SET relay_lease_until = now() + make_interval(secs => $3)
FROM (
    SELECT id FROM call_events
    WHERE needs_publish AND published_at IS NULL AND created_at < now() - make_interval(secs => $1)
      AND (relay_lease_until IS NULL OR relay_lease_until < now())
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) due
WHERE e.id = due.id
RETURNING e.id, e.tenant_id, e.call_id, e.type, e.occurred_at, e.payload, e.trace_id, e.publish_attempts";

// Only `call.*` events have a consumer here that reports back.
const DUE_UNPROCESSED: &str = "
UPDATE call_events e SET relay_lease_until = now() + make_interval(secs => $3)
FROM (
    SELECT id FROM call_events
    WHERE needs_publish AND published_at IS NOT NULL AND processed_at IS NULL
      AND published_at < now() - make_interval(secs => $1)
      AND type LIKE 'call.%'
      AND (relay_lease_until IS NULL OR relay_lease_until < now())
    ORDER BY published_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
) due
WHERE e.id = due.id
RETURNING e.id, e.tenant_id, e.call_id, e.type, e.occurred_at, e.payload, e.trace_id, e.publish_attempts";

/// Which due events a round takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Committed, never acked by JetStream.
    Unpublished,
    /// Acked, but no consumer processed them (JetStream lost them, or a
    /// consumer gave up).
    Unprocessed,
}

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            for due in [Due::Unpublished, Due::Unprocessed] {
                if let Err(err) = self.round(due).await {
                    tracing::warn!(%err, ?due, "relay round failed");
                }
            }
            match self.oldest_unpublished_age().await {
                Ok(age) => metrics::gauge!("outbox_oldest_unpublished_age_seconds").set(age),
                Err(err) => tracing::warn!(%err, "cannot read the outbox age"),
            }
        }
    }

    /// One round: lease the due rows, publish them, record the acks.
    /// Returns how many were published.
    pub async fn round(&self, due: Due) -> Result<usize, sqlx::Error> {
        let rows = self.take(due).await?;
        let rows: Vec<(OutboxRow, String)> = rows
            .into_iter()
            .map(|d| {
                // The first publish uses the event id, so it collapses with
                // the ingress's own publish; a republish must get past
                // JetStream's duplicate window, so it gets a fresh id
                // (consumers are idempotent anyway).
                let msg_id = match due {
                    Due::Unpublished => d.row.id.to_string(),
                    Due::Unprocessed => format!("{}.{}", d.row.id, d.publish_attempts + 1),
                };
                (d.row, msg_id)
            })
            .collect();
        let acked = shared::calls::publish_and_record(
            &self.js,
            &self.subjects,
            &self.pool,
            &rows,
            ACK_TIMEOUT,
        )
        .await?;
        let label = match due {
            Due::Unpublished => "publish",
            Due::Unprocessed => "republish",
        };
        metrics::counter!("relay_published_total", "kind" => label).increment(acked as u64);
        Ok(acked)
    }

    /// Leases and returns the rows due for `due`; other relay instances skip
    /// them until the lease ends or the outcome is recorded.
    pub async fn take(&self, due: Due) -> Result<Vec<DueRow>, sqlx::Error> {
        let (sql, after) = match due {
            Due::Unpublished => (DUE_UNPUBLISHED, self.publish_after),
            Due::Unprocessed => (DUE_UNPROCESSED, self.republish_after),
        };
        sqlx::query_as(sql)
            .bind(after.as_secs_f64())
            .bind(self.batch)
            .bind(LEASE.as_secs_f64())
            .fetch_all(&self.pool)
            .await
    }

    pub async fn oldest_unpublished_age(&self) -> Result<f64, sqlx::Error> {
        let age: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM now() - min(created_at))::float8
             FROM call_events WHERE needs_publish AND published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(age.unwrap_or(0.0))
    }
}
