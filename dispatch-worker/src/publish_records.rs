//! The records of the worker's handoff publishes, written together.
//!
//! A handoff event is complete once JetStream has it: marking it published
//! only keeps the relay from publishing it again, and a publish the relay
//! repeats under the same message id is dropped by JetStream. So the marks
//! need not be written batch by batch. They are collected and written in
//! one statement at most `flush_after` after the first of them (or once
//! `FLUSH_AT` are waiting): at 1,000 calls/s a batch holds about three
//! calls, and a statement per batch cost Postgres more than its rows. The
//! batch acks its messages without waiting for the record. A mark lost in
//! a crash costs one more deduplicated publish, as before.

use std::time::Duration;

use shared::calls::PublishOutcome;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Marks written in one statement at most.
const FLUSH_AT: usize = 2_000;

/// The handle batches hand their publish outcomes to.
#[derive(Clone)]
pub struct PublishRecorder {
    outcomes: mpsc::Sender<PublishOutcome>,
}

/// The task that writes the records; see [`PublishRecorder::start`].
pub struct RecordWriter {
    pool: PgPool,
    outcomes: mpsc::Receiver<PublishOutcome>,
    flush_after: Duration,
}

impl PublishRecorder {
    /// The handle and the task that writes what it is given, at most
    /// `flush_after` after the first unwritten mark. The relay must not find
    /// a handoff due before then: callers keep `flush_after` well under
    /// `RELAY_PUBLISH_AFTER`.
    pub fn start(pool: PgPool, flush_after: Duration) -> (Self, RecordWriter) {
        let (tx, rx) = mpsc::channel(1024);
        (
            Self { outcomes: tx },
            RecordWriter {
                pool,
                outcomes: rx,
                flush_after,
            },
        )
    }

    /// Queues `outcome` to be recorded; waits only when the writer is far
    /// behind.
    pub async fn record(&self, outcome: PublishOutcome) {
        if outcome.is_empty() {
            return;
        }
        if self.outcomes.send(outcome).await.is_err() {
            // Only after shutdown: the relay publishes these again.
            tracing::warn!("publish records are no longer written; the relay will repeat them");
        }
    }
}

impl RecordWriter {
    /// Writes until `stop`, then writes whatever was queued before it
    /// (the consumers have stopped by then) and returns.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                first = self.outcomes.recv() => first,
                () = stop.cancelled() => None,
            };
            let Some(mut pending) = first else { break };
            let deadline = tokio::time::Instant::now() + self.flush_after;
            while pending.len() < FLUSH_AT {
                tokio::select! {
                    more = self.outcomes.recv() => match more {
                        Some(more) => pending.extend(more),
                        None => break,
                    },
                    () = tokio::time::sleep_until(deadline) => break,
                    () = stop.cancelled() => break,
                }
            }
            self.write(&pending).await;
        }
        let mut rest = PublishOutcome::default();
        while let Ok(more) = self.outcomes.try_recv() {
            rest.extend(more);
        }
        self.write(&rest).await;
    }

    async fn write(&self, outcome: &PublishOutcome) {
        if outcome.is_empty() {
            return;
        }
        metrics::histogram!("dispatch_publish_records_written").record(outcome.len() as f64);
        if let Err(err) = shared::calls::record_publishes(&self.pool, outcome).await {
            tracing::warn!(%err, marks = outcome.len(), "cannot record handoff publishes; the relay will repeat them");
        }
    }
}
