//! Publishing committed outbox events right after the webhook's commit.
//!
//! Best effort by design: the webhook is already answered, and an event that
//! is not published here (NATS down, slow ack, a full queue) is published by
//! the dispatch-worker's relay. Acks are not written back: the
//! dispatch-worker marks an event published and processed in the one update
//! it makes anyway, so an inbound call costs the ingress one commit and no
//! second write racing the worker for the same row (that update waited on
//! the worker's row locks for seconds under load). An event whose message is
//! slow to be processed is published again by the relay after
//! `RELAY_PUBLISH_AFTER`, with the same `Nats-Msg-Id`, which JetStream drops
//! as a duplicate.

use std::sync::Arc;
use std::time::Duration;

use shared::calls::OutboxRow;
use shared::nats::Subjects;
use tokio::sync::{Semaphore, mpsc};

const QUEUE: usize = 16_384;
const IN_FLIGHT: usize = 1024;
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Publisher {
    queue: mpsc::Sender<OutboxRow>,
}

impl Publisher {
    pub fn start(js: async_nats::jetstream::Context, subjects: Subjects) -> Self {
        let (queue, mut rows) = mpsc::channel::<OutboxRow>(QUEUE);
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(row) = rows.recv().await {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let js = js.clone();
                let subjects = subjects.clone();
                tokio::spawn(async move {
                    let id = row.id.to_string();
                    match shared::calls::publish_outbox_row(&js, &subjects, &row, &id, ACK_TIMEOUT)
                        .await
                    {
                        Ok(()) => {
                            metrics::counter!("ingress_events_published_total").increment(1);
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
        Self { queue }
    }

    /// Queues `row` for publishing; never waits.
    pub fn enqueue(&self, row: OutboxRow) {
        if self.queue.try_send(row).is_err() {
            metrics::counter!("ingress_publish_queue_full_total").increment(1);
        }
    }
}
