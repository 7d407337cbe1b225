//! The call lifecycle from the `calls.*` stream: an inbound call becomes a
//! runtime dispatch and a handoff request; status and recording callbacks
//! update the session and its recordings, never moving a call backwards.
//!
//! Every handler reads the event from Postgres (the record; the message only
//! names it), does its work and marks the event processed in one
//! transaction, so a redelivered or republished message changes nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use shared::calls::{CallEventMessage, OutboxRow, event_type, join_token_aad, status_rank};
use shared::crypto::SecretBox;
use shared::nats::Subjects;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use shared::consumer::Outcome;

use crate::publish_records::PublishRecorder;

pub struct Lifecycle {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub secrets: SecretBox,
    pub dispatch_ttl: Duration,
    pub publish_records: PublishRecorder,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    tenant_id: Uuid,
    call_id: Uuid,
    #[sqlx(rename = "type")]
    kind: String,
    payload: serde_json::Value,
    occurred_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
}

fn param<'a>(payload: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    payload
        .get(name)
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
}

fn int_param(payload: &serde_json::Value, name: &str) -> Option<i32> {
    param(payload, name)
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|v| *v >= 0)
}

impl Lifecycle {
    /// Handles a batch of `calls.*` messages with ONE commit (the worker's
    /// group commit); the inbound calls of the batch become dispatches in one
    /// statement. If anything fails, the batch is rolled back and each
    /// message is handled in its own transaction, so one bad event never
    /// holds back the others.
    pub async fn handle_batch(
        self: Arc<Self>,
        messages: Vec<jetstream::Message>,
    ) -> Vec<(jetstream::Message, Outcome)> {
        metrics::histogram!("dispatch_batch_size").record(messages.len() as f64);
        let items: Vec<Item> = messages
            .iter()
            .map(|m| {
                // One call's log lines join up across services by trace_id.
                if let Some(trace) = shared::trace::TraceContext::from_nats(m.headers.as_ref()) {
                    tracing::debug!(trace_id = %trace.trace_id_hex(), subject = %m.subject, "call event received");
                }
                EventRef::parse(&m.subject, &m.payload)
            })
            .collect();
        let (outcomes, handoffs) = match self.process_group(&items).await {
            Ok(done) => done,
            Err(err) => {
                if messages.len() > 1 {
                    tracing::warn!(%err, size = messages.len(), "batch failed; retrying one by one");
                }
                let mut outcomes = Vec::with_capacity(items.len());
                let mut handoffs = Vec::new();
                for item in &items {
                    match self.process_group(std::slice::from_ref(item)).await {
                        Ok((mut one, rows)) => {
                            outcomes.push(one.pop().unwrap_or(Outcome::Done));
                            handoffs.extend(rows);
                        }
                        Err(err) => outcomes.push(Outcome::Retry(err.to_string())),
                    }
                }
                (outcomes, handoffs)
            }
        };
        // Handoffs go out after the commit and before the acks.
        self.publish_handoffs(handoffs).await;
        messages.into_iter().zip(outcomes).collect()
    }

    /// Processes `items` in one transaction: the inbound calls set-wise, the
    /// callbacks one by one.
    async fn process_group(
        &self,
        items: &[Item],
    ) -> Result<(Vec<Outcome>, Vec<OutboxRow>), sqlx::Error> {
        let mut inbound: Vec<(Uuid, Uuid)> = items
            .iter()
            .filter_map(|item| match item {
                Ok(e) if e.kind == event_type::CALL_INBOUND => Some((e.event_id, e.tenant_id)),
                _ => None,
            })
            .collect();
        // A redelivery can sit in the same batch as the original.
        inbound.sort_unstable();
        inbound.dedup();
        // Inbound calls only (the common case): one statement, atomic on its
        // own, so no BEGIN and COMMIT round trips around it.
        if items
            .iter()
            .all(|item| matches!(item, Ok(e) if e.kind == event_type::CALL_INBOUND))
        {
            let mut conn = self.pool.acquire().await?;
            let handoffs = self.create_dispatches(&mut conn, &inbound).await?;
            return Ok((items.iter().map(|_| Outcome::Done).collect(), handoffs));
        }
        let mut tx = self.pool.begin().await?;
        let mut handoffs = self.create_dispatches(&mut tx, &inbound).await?;
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            outcomes.push(match item {
                Err(reason) => Outcome::Reject(reason.clone()),
                Ok(e) if e.kind == event_type::CALL_INBOUND => Outcome::Done,
                Ok(e) => {
                    let (outcome, rows) = self.process_in(&mut tx, e).await?;
                    handoffs.extend(rows);
                    outcome
                }
            });
        }
        tx.commit().await?;
        Ok((outcomes, handoffs))
    }

    /// A status or recording callback (or an inbound event whose message
    /// named another type).
    async fn process_in(
        &self,
        tx: &mut PgConnection,
        message: &EventRef,
    ) -> Result<(Outcome, Vec<OutboxRow>), sqlx::Error> {
        let event_id = message.event_id;
        let event: Option<EventRow> = sqlx::query_as(
            "SELECT tenant_id, call_id, type, payload, occurred_at, processed_at
             FROM call_events WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
        )
        .bind(event_id)
        .bind(message.tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(event) = event else {
            return Ok((
                Outcome::Reject(format!(
                    "no event {event_id} in tenant {}",
                    message.tenant_id
                )),
                Vec::new(),
            ));
        };
        if event.processed_at.is_some() {
            metrics::counter!("dispatch_duplicates_total").increment(1);
            return Ok((Outcome::Done, Vec::new()));
        }
        match event.kind.as_str() {
            event_type::CALL_INBOUND => {
                let rows = self
                    .create_dispatches(&mut *tx, &[(event_id, message.tenant_id)])
                    .await?;
                return Ok((Outcome::Done, rows));
            }
            event_type::CALL_STATUS => apply_status(&mut *tx, &event).await?,
            event_type::CALL_RECORDING => upsert_recording(&mut *tx, &event).await?,
            other => {
                return Ok((
                    Outcome::Reject(format!("unexpected event type {other}")),
                    Vec::new(),
                ));
            }
        }
        // The message arrived, so the event was published: record that here
        // too (the ingress does not, to keep its hot path free of a second
        // write on rows this worker is updating).
        sqlx::query(
            "UPDATE call_events SET processed_at = now(), published_at = COALESCE(published_at, now())
             WHERE id = $1",
        )
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
        metrics::counter!("dispatch_events_processed_total", "type" => event.kind.clone())
            .increment(1);
        Ok((Outcome::Done, Vec::new()))
    }

    /// For every still-unprocessed inbound event of `event_ids`, in ONE
    /// statement: mark it processed, create the call's dispatch (pending,
    /// sealed join token, expiry), pin the call's agent version where the
    /// ingress could not (the agent had none active as it rang) and append
    /// the handoff outbox event.
    /// Returns the handoff events to publish. Events already processed (a
    /// redelivery) and calls that already have a dispatch produce nothing.
    async fn create_dispatches(
        &self,
        conn: &mut PgConnection,
        events: &[(Uuid, Uuid)],
    ) -> Result<Vec<OutboxRow>, sqlx::Error> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (event_ids, tenant_ids): (Vec<Uuid>, Vec<Uuid>) = events.iter().copied().unzip();
        let mut dispatch_ids = Vec::with_capacity(event_ids.len());
        let mut ciphertexts = Vec::with_capacity(event_ids.len());
        let mut nonces = Vec::with_capacity(event_ids.len());
        for _ in &event_ids {
            let dispatch_id = Uuid::now_v7();
            let token = shared::crypto::random_bytes::<32>();
            let sealed = self
                .secrets
                .seal(&token, &join_token_aad(dispatch_id))
                .map_err(|e| sqlx::Error::Protocol(format!("cannot seal join token: {e}")))?;
            dispatch_ids.push(dispatch_id);
            ciphertexts.push(sealed.ciphertext);
            nonces.push(sealed.nonce);
        }
        let ttl =
            chrono::Duration::from_std(self.dispatch_ttl).unwrap_or(chrono::Duration::seconds(60));
        let expires_at = Utc::now() + ttl;
        let rows: Vec<OutboxRow> = sqlx::query_as(CREATE_DISPATCHES)
            .bind(&event_ids)
            .bind(&tenant_ids)
            .bind(&dispatch_ids)
            .bind(&ciphertexts)
            .bind(&nonces)
            .bind(self.secrets.key_id())
            .bind(expires_at)
            .fetch_all(&mut *conn)
            .await?;
        metrics::counter!("dispatch_dispatches_created_total").increment(rows.len() as u64);
        metrics::counter!("dispatch_events_processed_total", "type" => event_type::CALL_INBOUND)
            .increment(rows.len() as u64);
        Ok(rows)
    }

    /// Publishes right away and hands the outcome to the publish records
    /// (written together with other batches'); whatever fails here the
    /// relay publishes later.
    async fn publish_handoffs(&self, rows: Vec<OutboxRow>) {
        // The handoff event's id is its message id: a relay republish of the
        // same event collapses with this one.
        let rows: Vec<(OutboxRow, String)> = rows
            .into_iter()
            .map(|row| {
                let id = row.id.to_string();
                (row, id)
            })
            .collect();
        let outcome =
            shared::calls::publish_rows(&self.js, &self.subjects, &rows, Duration::from_secs(5))
                .await;
        self.publish_records.record(outcome).await;
    }
}

/// What a `calls.*` message names: an event of a tenant. The event itself is
/// read from Postgres, and only within that tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub kind: String,
}

impl EventRef {
    /// Parses a message, refusing one whose body names another tenant than
    /// its subject (`...calls.<kind>.<tenant_id>`).
    pub fn parse(subject: &str, payload: &[u8]) -> Result<Self, String> {
        let message: CallEventMessage =
            serde_json::from_slice(payload).map_err(|e| format!("malformed call event: {e}"))?;
        let subject_tenant = subject
            .rsplit('.')
            .next()
            .and_then(|t| Uuid::parse_str(t).ok());
        if subject_tenant != Some(message.tenant_id) {
            return Err(format!(
                "call event {} names tenant {} but came on {subject}",
                message.event_id, message.tenant_id
            ));
        }
        Ok(Self {
            event_id: message.event_id,
            tenant_id: message.tenant_id,
            kind: message.kind,
        })
    }
}

/// A message's event, or why it is malformed.
type Item = Result<EventRef, String>;

/// See [`Lifecycle::create_dispatches`]: the batch is one call of
/// `create_dispatches` (migration 0022), one statement over the whole batch
/// whose joins the function pins to nested loops over unique keys (left to
/// itself, the planner takes a whole-table scan while the tables are small,
/// and keeps that plan as they grow: docs/decisions/0037-plan-stable-keys.md),
/// in one round trip and one commit. The handoff payload is the
/// [`shared::calls::HandoffRequested`] shape; the handoff event's id is its
/// dispatch's id.
const CREATE_DISPATCHES: &str = "
SELECT id, tenant_id, call_id, type, occurred_at, payload, trace_id
FROM create_dispatches($1, $2, $3, $4, $5, $6, $7)";

/// Moves the session forward to the callback's status; a late or repeated
/// callback never moves it back (a completed call stays completed).
async fn apply_status(conn: &mut PgConnection, event: &EventRow) -> Result<(), sqlx::Error> {
    let Some(status) = param(&event.payload, "CallStatus") else {
        return Ok(());
    };
    let Some(rank) = status_rank(status) else {
        tracing::warn!(status, "unknown CallStatus; recorded on the timeline only");
        return Ok(());
    };
    let at = param(&event.payload, "Timestamp")
        .and_then(|t| DateTime::parse_from_rfc2822(t).ok())
        .map_or(event.occurred_at, |t| t.with_timezone(&Utc));
    let duration = int_param(&event.payload, "CallDuration");
    sqlx::query(
        "UPDATE call_sessions SET
             status = CASE WHEN $2::int > (CASE status WHEN 'queued' THEN 0 WHEN 'ringing' THEN 1
                                                      WHEN 'in-progress' THEN 2 ELSE 3 END)
                           THEN $3 ELSE status END,
             answered_at = COALESCE(answered_at,
                 CASE WHEN $3 = 'in-progress' THEN $4
                      -- Never before the ring: a CallDuration longer than the
                      -- call has lasted here (clocks, a late callback) would
                      -- make the ring time negative.
                      WHEN $3 = 'completed' AND $5::int > 0
                          THEN GREATEST(started_at, $4 - make_interval(secs => $5::int))
                 END),
             ended_at = COALESCE(ended_at, CASE WHEN $2::int = 3 THEN $4 END),
             duration_seconds = COALESCE(duration_seconds, $5),
             -- An end status releases the call's slot under its tenant's
             -- concurrent-call limit.
             live = live AND $2::int < 3,
             released_at = CASE WHEN live AND $2::int = 3 THEN now() ELSE released_at END,
             release_reason = CASE WHEN live AND $2::int = 3 THEN 'ended' ELSE release_reason END,
             updated_at = now()
         WHERE id = $1",
    )
    .bind(event.call_id)
    .bind(i32::from(rank))
    .bind(status)
    .bind(at)
    .bind(duration)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Recording metadata, upserted by RecordingSid; a finished recording keeps
/// its final status.
async fn upsert_recording(conn: &mut PgConnection, event: &EventRow) -> Result<(), sqlx::Error> {
    let Some(sid) = param(&event.payload, "RecordingSid") else {
        return Ok(());
    };
    let channels = int_param(&event.payload, "RecordingChannels").filter(|c| (1..=2).contains(c));
    sqlx::query(
        "INSERT INTO recordings (id, tenant_id, call_id, recording_sid, url, duration_seconds, channels, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (recording_sid) DO UPDATE SET
             url = COALESCE(EXCLUDED.url, recordings.url),
             duration_seconds = COALESCE(EXCLUDED.duration_seconds, recordings.duration_seconds),
             channels = COALESCE(EXCLUDED.channels, recordings.channels),
             status = CASE WHEN recordings.status IN ('completed', 'absent', 'failed')
                           THEN recordings.status ELSE EXCLUDED.status END,
             updated_at = now()
         WHERE recordings.tenant_id = EXCLUDED.tenant_id",
    )
    .bind(Uuid::now_v7())
    .bind(event.tenant_id)
    .bind(event.call_id)
    .bind(sid)
    .bind(param(&event.payload, "RecordingUrl"))
    .bind(int_param(&event.payload, "RecordingDuration"))
    .bind(channels)
    .bind(param(&event.payload, "RecordingStatus").unwrap_or("completed"))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tenant_id: Uuid) -> Vec<u8> {
        serde_json::to_vec(&CallEventMessage {
            event_id: Uuid::now_v7(),
            kind: event_type::CALL_STATUS.into(),
            tenant_id,
            call_id: Uuid::now_v7(),
            occurred_at: Utc::now(),
            payload: serde_json::json!({}),
        })
        .expect("serialize")
    }

    #[test]
    fn event_ref_takes_its_tenant_from_a_matching_subject() {
        let tenant = Uuid::now_v7();
        let parsed = EventRef::parse(&format!("p.calls.status.{tenant}"), &message(tenant))
            .expect("matching tenant");
        assert_eq!(parsed.tenant_id, tenant);
        assert_eq!(parsed.kind, event_type::CALL_STATUS);
    }

    #[test]
    fn event_ref_refuses_a_body_of_another_tenant_or_garbage() {
        let tenant = Uuid::now_v7();
        let other = Uuid::now_v7();
        let err = EventRef::parse(&format!("p.calls.status.{other}"), &message(tenant))
            .expect_err("tenant mismatch");
        assert!(err.contains("names tenant"), "{err}");
        assert!(EventRef::parse("p.calls.status.x", &message(tenant)).is_err());
        assert!(EventRef::parse(&format!("p.calls.status.{tenant}"), b"{").is_err());
    }
}
