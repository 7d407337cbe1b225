//! Tenant event webhooks: the relay that hands due deliveries to the
//! workers ([`relay`]), the consumer that makes each attempt ([`delivery`])
//! with per-endpoint limits, the api's test requests, and the metrics.
//! docs/decisions/0048-tenant-event-webhooks.md has the design.
//!
//! One slow or dead endpoint never holds up another: each endpoint gets at
//! most `WEBHOOK_ENDPOINT_CONCURRENCY` attempts at once and a short queue
//! behind them; a delivery that finds the queue full goes back to Postgres,
//! due a second later, and its NATS message is acknowledged.

pub mod delivery;
pub mod relay;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use shared::consumer::Outcome;
use shared::webhooks::DueDelivery;
use tokio::sync::Semaphore;
use uuid::Uuid;

pub use delivery::{Deliverer, DeliverySettings};

/// The durable consumer every instance shares.
pub const CONSUMER: &str = "automation-worker-webhooks";

/// Per-endpoint limits of one instance.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLimits {
    /// Attempts at once to one endpoint.
    pub concurrency: usize,
    /// Deliveries waiting for one of those beyond them.
    pub queue: usize,
}

/// One endpoint's share of this instance.
struct Gate {
    permits: Arc<Semaphore>,
    /// Deliveries running or waiting.
    admitted: AtomicUsize,
}

pub struct Webhooks {
    pub deliverer: Deliverer,
    pub subjects: shared::nats::Subjects,
    pub limits: EndpointLimits,
    /// How long a delivery waits for its endpoint's turn before it goes
    /// back to Postgres (under the consumer's ack wait).
    pub max_wait: Duration,
    gates: Mutex<HashMap<Uuid, Arc<Gate>>>,
}

impl Webhooks {
    pub fn new(
        deliverer: Deliverer,
        subjects: shared::nats::Subjects,
        limits: EndpointLimits,
        max_wait: Duration,
    ) -> Self {
        Self {
            deliverer,
            subjects,
            limits,
            max_wait,
            gates: Mutex::new(HashMap::new()),
        }
    }

    fn gate(&self, endpoint_id: Uuid) -> Arc<Gate> {
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Idle endpoints' gates are dropped as the map grows.
        if gates.len() > 10_000 {
            gates.retain(|_, gate| gate.admitted.load(Ordering::Relaxed) > 0);
        }
        gates
            .entry(endpoint_id)
            .or_insert_with(|| {
                Arc::new(Gate {
                    permits: Arc::new(Semaphore::new(self.limits.concurrency.max(1))),
                    admitted: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Handles one message of the `WEBHOOKS` stream.
    pub async fn handle(
        self: Arc<Self>,
        message: jetstream::Message,
    ) -> (jetstream::Message, Outcome) {
        let due: DueDelivery = match serde_json::from_slice(&message.payload) {
            Ok(due) => due,
            Err(err) => {
                return (
                    message,
                    Outcome::Reject(format!("malformed delivery: {err}")),
                );
            }
        };
        if message.subject.as_str() != self.subjects.webhooks_deliver(due.tenant_id) {
            return (
                message,
                Outcome::Reject("subject does not match the delivery's tenant".into()),
            );
        }
        // A message delivered again may have had its attempt already: only
        // a delivery still under its lease is attempted.
        let redelivered = message.info().is_ok_and(|info| info.delivered > 1);
        let due = if redelivered {
            match self
                .deliverer
                .leased(due.delivery_id, due.tenant_id, due.lease)
                .await
            {
                Ok(Some(current)) => current,
                Ok(None) => return (message, Outcome::Done),
                Err(err) => return (message, Outcome::Retry(err.to_string())),
            }
        } else {
            due
        };
        let outcome = match self.attempt_in_turn(&due).await {
            Ok(()) => Outcome::Done,
            Err(err) => Outcome::Retry(err.to_string()),
        };
        (message, outcome)
    }

    /// Waits for the endpoint's turn, then makes the attempt; a delivery
    /// that cannot wait goes back to Postgres.
    async fn attempt_in_turn(&self, due: &DueDelivery) -> anyhow::Result<()> {
        let gate = self.gate(due.endpoint_id);
        let limit = self.limits.concurrency + self.limits.queue;
        if gate.admitted.fetch_add(1, Ordering::AcqRel) >= limit {
            gate.admitted.fetch_sub(1, Ordering::AcqRel);
            return self.defer(due).await;
        }
        let result = async {
            match tokio::time::timeout(self.max_wait, gate.permits.clone().acquire_owned()).await {
                Ok(Ok(_permit)) => self.deliverer.attempt(due).await.map(|_| ()),
                _ => self.defer(due).await,
            }
        }
        .await;
        gate.admitted.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// Gives the delivery back: due again in a second, without the lease.
    async fn defer(&self, due: &DueDelivery) -> anyhow::Result<()> {
        metrics::counter!("webhook_deliveries_deferred_total").increment(1);
        sqlx::query(
            "UPDATE webhook_deliveries SET lease = NULL, next_attempt_at = now() + interval '1 second'
             WHERE id = $1 AND tenant_id = $2 AND lease = $3 AND status = 'pending'",
        )
        .bind(due.delivery_id)
        .bind(due.tenant_id)
        .bind(due.lease)
        .execute(&self.deliverer.pool)
        .await?;
        Ok(())
    }

    /// The api's `webhooks.test`: takes the test delivery (left to the
    /// worker asked) and makes its first attempt now.
    pub async fn test(
        &self,
        request: shared::webhooks::TestDeliveryRequest,
    ) -> anyhow::Result<Option<shared::webhooks::AttemptOutcome>> {
        let lease = Uuid::new_v4();
        let taken = sqlx::query(
            "UPDATE webhook_deliveries SET lease = $4
             WHERE id = $1 AND tenant_id = $2 AND endpoint_id = $3
               AND status = 'pending' AND attempts = 0 AND lease IS NULL",
        )
        .bind(request.delivery_id)
        .bind(request.tenant_id)
        .bind(request.endpoint_id)
        .bind(lease)
        .execute(&self.deliverer.pool)
        .await?
        .rows_affected();
        if taken == 0 {
            return Ok(None);
        }
        match self
            .deliverer
            .leased(request.delivery_id, request.tenant_id, lease)
            .await?
        {
            Some(due) => self.deliverer.attempt(&due).await,
            None => Ok(None),
        }
    }
}

/// Exports the age of each endpoint's oldest undelivered message, every few
/// seconds (an endpoint with none goes back to 0).
pub async fn watch_backlog(pool: sqlx::PgPool, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut seen: Vec<Uuid> = Vec::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let ages: Vec<(Uuid, f64)> = match sqlx::query_as(
            "SELECT endpoint_id, date_part('epoch', now() - min(created_at))::float8
             FROM webhook_deliveries WHERE status = 'pending' GROUP BY endpoint_id",
        )
        .fetch_all(&pool)
        .await
        {
            Ok(ages) => ages,
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the webhook backlog");
                continue;
            }
        };
        for endpoint in &seen {
            if !ages.iter().any(|(id, _)| id == endpoint) {
                metrics::gauge!("webhook_oldest_pending_seconds", "endpoint_id" => endpoint.to_string())
                    .set(0.0);
            }
        }
        for (endpoint, age) in &ages {
            metrics::gauge!("webhook_oldest_pending_seconds", "endpoint_id" => endpoint.to_string())
                .set(*age);
        }
        seen = ages.into_iter().map(|(id, _)| id).collect();
    }
}
