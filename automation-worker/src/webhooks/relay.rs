//! The relay: hands due deliveries to the workers over NATS.
//!
//! Postgres holds the schedule (`webhook_deliveries.next_attempt_at`). Every
//! `WEBHOOK_POLL_INTERVAL` each instance takes the due deliveries no other
//! instance is taking (`FOR UPDATE SKIP LOCKED`), gives each a new lease and
//! moves its due time forward by the lease's length, reads what each
//! attempt needs (endpoint, sealed secrets, message), and publishes them to
//! `webhooks.deliver.<tenant>`. A delivery whose message is lost (NATS
//! restarted empty) or whose worker died is due again when its lease runs
//! out; only the lease's holder can record an attempt.

use std::time::Duration;

use async_nats::jetstream;
use shared::nats::Subjects;
use shared::webhooks::{self, DueDelivery};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The most deliveries one relay statement takes.
const BATCH: i64 = 500;

/// Takes the due deliveries no other instance is taking, leases them and
/// reads what their attempts need, in one statement. Without waiting for
/// the WAL flush: a lease a crash loses leaves the delivery due, to be
/// taken again.
static TAKE_DUE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS sc),
         d AS (
             UPDATE webhook_deliveries d
             SET lease = gen_random_uuid(), next_attempt_at = now() + make_interval(secs => $1)
             FROM (SELECT id FROM webhook_deliveries
                   WHERE status = 'pending' AND next_attempt_at <= now()
                   ORDER BY next_attempt_at
                   LIMIT $2
                   FOR UPDATE SKIP LOCKED) due
             WHERE d.id = due.id AND EXISTS (SELECT 1 FROM cfg)
             RETURNING d.*)
         SELECT {} FROM d {}",
        webhooks::DUE_DELIVERY_COLUMNS,
        webhooks::DUE_DELIVERY_JOINS
    )
});

pub struct Relay {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub lease: Duration,
    pub poll_interval: Duration,
}

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let taken = match self.relay_due().await {
                Ok(taken) => taken,
                Err(err) => {
                    tracing::warn!(error = %err, "webhook relay: cannot take due deliveries");
                    0
                }
            };
            // A full batch means more are due: go on at once.
            if taken < BATCH as usize {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(self.poll_interval) => {}
                }
            } else if shutdown.is_cancelled() {
                return;
            }
        }
    }

    /// Takes the due deliveries and publishes them; how many were taken.
    pub async fn relay_due(&self) -> anyhow::Result<usize> {
        let due: Vec<DueDelivery> = sqlx::query_as(sqlx::AssertSqlSafe(TAKE_DUE.as_str()))
            .bind(self.lease.as_secs_f64())
            .bind(BATCH)
            .fetch_all(&self.pool)
            .await?;
        let mut acks = Vec::with_capacity(due.len());
        for delivery in &due {
            let payload = serde_json::to_vec(delivery)?;
            let mut headers = async_nats::HeaderMap::new();
            // A copy published twice within the stream's window is stored once.
            headers.insert("Nats-Msg-Id", delivery.lease.to_string().as_str());
            match self
                .js
                .publish_with_headers(
                    self.subjects.webhooks_deliver(delivery.tenant_id),
                    headers,
                    payload.into(),
                )
                .await
            {
                Ok(ack) => acks.push(ack),
                // Due again when the lease runs out.
                Err(err) => {
                    tracing::warn!(error = %err, delivery_id = %delivery.delivery_id, "webhook relay: cannot publish")
                }
            }
        }
        for ack in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            if let Err(err) = ack {
                tracing::warn!(error = %err, "webhook relay: publish not acknowledged");
            }
        }
        metrics::counter!("webhook_relayed_total").increment(due.len() as u64);
        Ok(due.len())
    }
}
