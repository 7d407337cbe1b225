//! NATS is the transport and Postgres the record: when the bus loses what it
//! had acknowledged (its store deleted, lazy fsync and a power cut, a
//! cluster restored empty), this task puts back what was lost.
//!
//! Every few seconds it reads each stream's creation time. A missing stream
//! is created again; a stream created since the last look has lost its
//! messages. Call events that were published but not processed come back
//! through the relay's republish (`Due::Unprocessed`); the handoffs of
//! dispatches still waiting for a runtime are published here again, under
//! a message id of this recovery, so every instance that notices publishes
//! each one once. A runtime may then see a handoff twice; its claim decides.
//! Consumers come back on their own (`consumer::run` binds again).
//!
//! The creation times it last saw are kept in Postgres (`bus_streams`), so
//! a loss that happened while no instance ran (a power cut takes NATS and
//! the workers down together) is noticed by the first one to start.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use shared::calls::{OutboxRow, event_type};
use shared::nats::Subjects;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How often the streams are looked at: one request per stream.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Records a stream's creation time when it changed; returns the one
/// recorded before (no row: first sight, or unchanged).
const RECORD_CREATED: &str = "
WITH previous AS (SELECT created_ns FROM bus_streams WHERE name = $1)
INSERT INTO bus_streams (name, created_ns) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET created_ns = EXCLUDED.created_ns, seen_at = now()
    WHERE bus_streams.created_ns <> EXCLUDED.created_ns
RETURNING (SELECT created_ns FROM previous)";

/// The handoff events of dispatches that can still be claimed.
const PENDING_HANDOFFS: &str = "
SELECT e.id, e.tenant_id, e.call_id, e.type, e.occurred_at, e.payload, e.trace_id
FROM runtime_dispatches d
JOIN call_events e ON e.call_id = d.call_id AND e.tenant_id = d.tenant_id AND e.type = $1
WHERE d.status = 'pending' AND d.expires_at > now()
  -- Published before the stream was made anew: what it lost. Later ones
  -- are in the new stream already (and unpublished ones are the relay's).
  AND e.published_at < $2
ORDER BY d.expires_at";

pub struct BusRecovery {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub replicas: u8,
}

impl BusRecovery {
    pub async fn run(self, stop: CancellationToken) {
        // Stream name -> creation time (ns) already recorded in Postgres,
        // so an unchanged stream costs no statement.
        let mut seen: HashMap<String, i64> = HashMap::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            for config in shared::nats::stream_configs(&self.subjects, self.replicas) {
                let name = config.name.clone();
                let created = match self.js.get_stream(&name).await {
                    Ok(stream) => {
                        let ns = stream.cached_info().created.unix_timestamp_nanos();
                        i64::try_from(ns).unwrap_or(i64::MAX)
                    }
                    Err(err) => {
                        // Missing, or NATS unreachable: creating it tells which.
                        if let Err(create_err) = shared::nats::ensure_stream(&self.js, config).await
                        {
                            tracing::debug!(stream = %name, %err, %create_err, "stream unavailable");
                            continue;
                        }
                        tracing::warn!(stream = %name, "stream was missing; created it again");
                        continue; // Its creation time is read next round.
                    }
                };
                if seen.get(&name) == Some(&created) {
                    continue;
                }
                let previous: Option<Option<i64>> = match sqlx::query_scalar(RECORD_CREATED)
                    .bind(&name)
                    .bind(created)
                    .fetch_optional(&self.pool)
                    .await
                {
                    Ok(previous) => previous,
                    Err(err) => {
                        tracing::warn!(stream = %name, %err, "cannot record the stream's creation time");
                        continue;
                    }
                };
                seen.insert(name.clone(), created);
                // Lost only if a different creation time was recorded before.
                if !matches!(previous, Some(Some(p)) if p != created) {
                    continue;
                }
                tracing::warn!(stream = %name, "stream created anew: the bus lost its messages");
                metrics::counter!("bus_streams_recreated_total", "stream" => name.clone())
                    .increment(1);
                if name == self.subjects.runtime_handoffs_stream() {
                    match self.republish_pending_handoffs(created).await {
                        Ok(n) => tracing::warn!(handoffs = n, "published pending handoffs again"),
                        Err(err) => {
                            tracing::error!(%err, "cannot publish pending handoffs again; retrying");
                            // Forget the new time, so the next round sees the change again.
                            seen.remove(&name);
                            let _ = sqlx::query(
                                "UPDATE bus_streams SET created_ns = $2 WHERE name = $1",
                            )
                            .bind(&name)
                            .bind(previous.flatten().unwrap_or_default())
                            .execute(&self.pool)
                            .await;
                        }
                    }
                }
            }
        }
    }

    /// Publishes the handoff of every dispatch still claimable; returns how
    /// many the stream acknowledged.
    async fn republish_pending_handoffs(&self, stream_created: i64) -> Result<usize, String> {
        let created = chrono::DateTime::from_timestamp_nanos(stream_created);
        let rows: Vec<OutboxRow> = sqlx::query_as(PENDING_HANDOFFS)
            .bind(event_type::HANDOFF_REQUESTED)
            .bind(created)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        let mut acked = 0;
        for row in &rows {
            // The same id for every instance that recovers from this loss.
            let msg_id = format!("{}.r{stream_created}", row.id);
            shared::calls::publish_outbox_row(&self.js, &self.subjects, row, &msg_id, ACK_TIMEOUT)
                .await?;
            acked += 1;
        }
        metrics::counter!("bus_handoffs_republished_total").increment(acked as u64);
        Ok(acked)
    }
}
