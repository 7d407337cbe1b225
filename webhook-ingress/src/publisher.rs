//! Publishing committed outbox events right after the webhook's commit.
//!
//! Best effort by design: the webhook is already answered, and an event that
//! is not published here (NATS down, slow ack, a full queue) is published by
//! the dispatch-worker's relay. Acks are recorded in batches
//! (`published_at`).

use std::sync::Arc;
use std::time::Duration;

use shared::calls::OutboxRow;
use shared::nats::Subjects;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};

const QUEUE: usize = 16_384;
const IN_FLIGHT: usize = 1024;
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Publisher {
    queue: mpsc::Sender<OutboxRow>,
}

impl Publisher {
    pub fn start(pool: PgPool, js: async_nats::jetstream::Context, subjects: Subjects) -> Self {
        let (queue, mut rows) = mpsc::channel::<OutboxRow>(QUEUE);
        let (acked_tx, mut acked) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(row) = rows.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let js = js.clone();
                let subjects = subjects.clone();
                let acked_tx = acked_tx.clone();
                tokio::spawn(async move {
                    let id = row.id.to_string();
                    match shared::calls::publish_outbox_row(&js, &subjects, &row, &id, ACK_TIMEOUT)
                        .await
                    {
                        Ok(()) => {
                            metrics::counter!("ingress_events_published_total").increment(1);
                            let _ = acked_tx.send(row.id);
                        }
                        Err(err) => {
                            metrics::counter!("ingress_publish_failures_total").increment(1);
                            tracing::warn!(event_id = %row.id, %err, "publish failed; the relay will retry");
                        }
                    }
                    drop(permit);
                });
            }
        });
        tokio::spawn(async move {
            while let Some(first) = acked.recv().await {
                let mut ids = vec![first];
                while ids.len() < 1000 {
                    match acked.try_recv() {
                        Ok(id) => ids.push(id),
                        Err(_) => break,
                    }
                }
                if let Err(err) = shared::calls::mark_published(&pool, &ids).await {
                    tracing::warn!(%err, count = ids.len(), "cannot mark events published; the relay will republish (deduplicated)");
                }
            }
        });
        Self { queue }
    }

    /// Queues `row` for publishing; never waits.
    pub fn enqueue(&self, row: OutboxRow) {
        if self.queue.try_send(row).is_err() {
            metrics::counter!("ingress_publish_queue_full_total").increment(1);
        }
    }
}
