//! The outbox relay: publishes events the ingress (or this worker) committed
//! but did not get onto JetStream, and publishes again events that were
//! published but never processed. Instances share the work: each round
//! locks its rows with `FOR UPDATE SKIP LOCKED`.

use std::time::Duration;

use async_nats::jetstream;
use futures::future::join_all;
use shared::calls::OutboxRow;
use shared::nats::Subjects;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
struct DueRow {
    #[sqlx(flatten)]
    row: OutboxRow,
    publish_attempts: i32,
}

const DUE_UNPUBLISHED: &str = "
SELECT id, tenant_id, call_id, type, occurred_at, payload, trace_id, publish_attempts
FROM call_events
WHERE needs_publish AND published_at IS NULL AND created_at < now() - make_interval(secs => $1)
ORDER BY created_at
LIMIT $2
FOR UPDATE SKIP LOCKED";

// Only `call.*` events have a consumer here that reports back.
const DUE_UNPROCESSED: &str = "
SELECT id, tenant_id, call_id, type, occurred_at, payload, trace_id, publish_attempts
FROM call_events
WHERE needs_publish AND published_at IS NOT NULL AND processed_at IS NULL
  AND published_at < now() - make_interval(secs => $1)
  AND type LIKE 'call.%'
ORDER BY published_at
LIMIT $2
FOR UPDATE SKIP LOCKED";

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.round(DUE_UNPUBLISHED, self.publish_after, false).await {
                tracing::warn!(%err, "relay round failed");
            }
            if let Err(err) = self
                .round(DUE_UNPROCESSED, self.republish_after, true)
                .await
            {
                tracing::warn!(%err, "relay republish round failed");
            }
            match self.oldest_unpublished_age().await {
                Ok(age) => metrics::gauge!("outbox_oldest_unpublished_age_seconds").set(age),
                Err(err) => tracing::warn!(%err, "cannot read the outbox age"),
            }
        }
    }

    /// One round: lock due rows, publish them, record the acks, commit.
    /// Returns how many were published.
    pub async fn round(
        &self,
        sql: &'static str,
        after: Duration,
        republish: bool,
    ) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let due: Vec<DueRow> = sqlx::query_as(sql)
            .bind(after.as_secs_f64())
            .bind(self.batch)
            .fetch_all(&mut *tx)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let results = join_all(due.iter().map(|d| async move {
            // The first publish uses the event id, so it collapses with the
            // ingress's own publish; a republish must get past JetStream's
            // duplicate window, so it gets a fresh id (consumers are
            // idempotent anyway).
            let msg_id = if republish {
                format!("{}.{}", d.row.id, d.publish_attempts + 1)
            } else {
                d.row.id.to_string()
            };
            let result = shared::calls::publish_outbox_row(
                &self.js,
                &self.subjects,
                &d.row,
                &msg_id,
                Duration::from_secs(5),
            )
            .await;
            (d.row.id, result)
        }))
        .await;
        let mut acked: Vec<Uuid> = Vec::new();
        let mut failed: Vec<Uuid> = Vec::new();
        for (id, result) in results {
            match result {
                Ok(()) => acked.push(id),
                Err(err) => {
                    tracing::warn!(event_id = %id, %err, "relay publish failed");
                    failed.push(id);
                }
            }
        }
        sqlx::query(
            "UPDATE call_events
             SET published_at = now(),
                 publish_attempts = publish_attempts + 1,
                 processed_at = CASE WHEN type = 'runtime.handoff_requested' THEN now() ELSE processed_at END
             WHERE id = ANY($1)",
        )
        .bind(&acked)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE call_events SET publish_attempts = publish_attempts + 1 WHERE id = ANY($1)",
        )
        .bind(&failed)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let label = if republish { "republish" } else { "publish" };
        metrics::counter!("relay_published_total", "kind" => label).increment(acked.len() as u64);
        Ok(acked.len())
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

/// The relay's SQL, for tests that drive rounds by hand.
pub mod sql {
    pub const DUE_UNPUBLISHED: &str = super::DUE_UNPUBLISHED;
    pub const DUE_UNPROCESSED: &str = super::DUE_UNPROCESSED;
}
