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
use shared::calls::{
    CallEventMessage, HandoffRequested, OutboxRow, event_type, join_token_aad, status_rank,
};
use shared::crypto::SecretBox;
use shared::nats::Subjects;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::consumer::Outcome;

pub struct Lifecycle {
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub secrets: SecretBox,
    pub dispatch_ttl: Duration,
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
    /// group commit). If any statement fails, the batch is rolled back and
    /// each message is handled in its own transaction, so one bad event
    /// never holds back the others.
    pub async fn handle_batch(
        self: Arc<Self>,
        messages: Vec<jetstream::Message>,
    ) -> Vec<(jetstream::Message, Outcome)> {
        metrics::histogram!("dispatch_batch_size").record(messages.len() as f64);
        let ids: Vec<Result<Uuid, String>> = messages
            .iter()
            .map(|m| {
                serde_json::from_slice::<CallEventMessage>(&m.payload)
                    .map(|e| e.event_id)
                    .map_err(|e| format!("malformed call event: {e}"))
            })
            .collect();
        let results = match self.process_group(&ids).await {
            Ok(results) => results,
            Err(err) => {
                if messages.len() > 1 {
                    tracing::warn!(%err, size = messages.len(), "batch failed; retrying one by one");
                }
                let mut results = Vec::with_capacity(ids.len());
                for id in &ids {
                    results.push(match self.process_group(std::slice::from_ref(id)).await {
                        Ok(mut one) => one.pop().unwrap_or((Outcome::Done, None)),
                        Err(err) => (Outcome::Retry(err.to_string()), None),
                    });
                }
                results
            }
        };
        // Handoffs go out after the commit and before the acks.
        let handoffs: Vec<OutboxRow> = results.iter().filter_map(|(_, h)| h.clone()).collect();
        self.publish_handoffs(handoffs).await;
        messages
            .into_iter()
            .zip(results)
            .map(|(message, (outcome, _))| (message, outcome))
            .collect()
    }

    /// Processes `ids` in one transaction.
    async fn process_group(
        &self,
        ids: &[Result<Uuid, String>],
    ) -> Result<Vec<(Outcome, Option<OutboxRow>)>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            results.push(match id {
                Err(reason) => (Outcome::Reject(reason.clone()), None),
                Ok(id) => self.process_in(&mut tx, *id).await?,
            });
        }
        tx.commit().await?;
        Ok(results)
    }

    async fn process_in(
        &self,
        tx: &mut PgConnection,
        event_id: Uuid,
    ) -> Result<(Outcome, Option<OutboxRow>), sqlx::Error> {
        let event: Option<EventRow> = sqlx::query_as(
            "SELECT tenant_id, call_id, type, payload, occurred_at, processed_at
             FROM call_events WHERE id = $1 FOR UPDATE",
        )
        .bind(event_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(event) = event else {
            return Ok((Outcome::Reject(format!("no event {event_id}")), None));
        };
        if event.processed_at.is_some() {
            metrics::counter!("dispatch_duplicates_total").increment(1);
            return Ok((Outcome::Done, None));
        }
        let mut handoff = None;
        match event.kind.as_str() {
            event_type::CALL_INBOUND => {
                handoff = self.create_dispatch(&mut *tx, &event).await?;
            }
            event_type::CALL_STATUS => apply_status(&mut *tx, &event).await?,
            event_type::CALL_RECORDING => upsert_recording(&mut *tx, &event).await?,
            other => {
                return Ok((
                    Outcome::Reject(format!("unexpected event type {other}")),
                    None,
                ));
            }
        }
        sqlx::query("UPDATE call_events SET processed_at = now() WHERE id = $1")
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
        metrics::counter!("dispatch_events_processed_total", "type" => event.kind.clone())
            .increment(1);
        Ok((Outcome::Done, handoff))
    }

    /// The dispatch, its handoff outbox event and the call's agent version,
    /// fixed now (the agent's active version at ring time). `None` when the
    /// call already has its dispatch.
    async fn create_dispatch(
        &self,
        conn: &mut PgConnection,
        event: &EventRow,
    ) -> Result<Option<OutboxRow>, sqlx::Error> {
        #[derive(sqlx::FromRow)]
        struct CallRow {
            call_sid: String,
            from_number: String,
            to_number: String,
            agent_id: Option<Uuid>,
            agent_version_id: Option<Uuid>,
            active_version_id: Option<Uuid>,
            active_version: Option<i32>,
            fixed_version: Option<i32>,
        }
        let call: CallRow = sqlx::query_as(
            "SELECT s.call_sid, s.from_number, s.to_number, s.agent_id, s.agent_version_id,
                    a.active_version_id, av.version AS active_version, fv.version AS fixed_version
             FROM call_sessions s
             LEFT JOIN agents a ON a.id = s.agent_id AND a.tenant_id = s.tenant_id
             LEFT JOIN agent_versions av ON av.id = a.active_version_id
             LEFT JOIN agent_versions fv ON fv.id = s.agent_version_id
             WHERE s.id = $1 AND s.tenant_id = $2",
        )
        .bind(event.call_id)
        .bind(event.tenant_id)
        .fetch_one(&mut *conn)
        .await?;
        let (agent_version_id, agent_version) = match call.agent_version_id {
            Some(fixed) => (Some(fixed), call.fixed_version),
            None => (call.active_version_id, call.active_version),
        };
        let dispatch_id = Uuid::now_v7();
        let token = shared::crypto::random_bytes::<32>();
        let sealed = self
            .secrets
            .seal(&token, &join_token_aad(dispatch_id))
            .map_err(|e| sqlx::Error::Protocol(format!("cannot seal join token: {e}")))?;
        let ttl =
            chrono::Duration::from_std(self.dispatch_ttl).unwrap_or(chrono::Duration::seconds(60));
        let expires_at = Utc::now() + ttl;
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO runtime_dispatches (id, tenant_id, call_id, agent_id, agent_version_id, status,
                 join_token_ciphertext, join_token_nonce, join_token_key_id, expires_at)
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9)
             ON CONFLICT (call_id) DO NOTHING
             RETURNING id",
        )
        .bind(dispatch_id)
        .bind(event.tenant_id)
        .bind(event.call_id)
        .bind(call.agent_id)
        .bind(agent_version_id)
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(expires_at)
        .fetch_optional(&mut *conn)
        .await?;
        if inserted.is_none() {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE call_sessions SET agent_version_id = $2, updated_at = now()
             WHERE id = $1 AND agent_version_id IS NULL",
        )
        .bind(event.call_id)
        .bind(agent_version_id)
        .execute(&mut *conn)
        .await?;
        let handoff = HandoffRequested {
            dispatch_id,
            call_id: event.call_id,
            call_sid: call.call_sid,
            tenant_id: event.tenant_id,
            agent_id: call.agent_id,
            agent_version_id,
            agent_version,
            from: call.from_number,
            to: call.to_number,
            expires_at,
        };
        let payload = serde_json::to_value(&handoff)
            .map_err(|e| sqlx::Error::Protocol(format!("cannot encode handoff: {e}")))?;
        let handoff_event_id = Uuid::now_v7();
        let occurred_at = Utc::now();
        sqlx::query(
            "INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, needs_publish, occurred_at)
             VALUES ($1, $2, $3, $4, $4, $5, true, $6)
             ON CONFLICT (call_id, idempotency_key) DO NOTHING",
        )
        .bind(handoff_event_id)
        .bind(event.tenant_id)
        .bind(event.call_id)
        .bind(event_type::HANDOFF_REQUESTED)
        .bind(&payload)
        .bind(occurred_at)
        .execute(&mut *conn)
        .await?;
        metrics::counter!("dispatch_dispatches_created_total").increment(1);
        Ok(Some(OutboxRow {
            id: handoff_event_id,
            tenant_id: event.tenant_id,
            call_id: event.call_id,
            kind: event_type::HANDOFF_REQUESTED.to_owned(),
            occurred_at,
            payload,
        }))
    }

    /// Publishes right away and records the acks in one update; whatever
    /// fails here the relay publishes later.
    async fn publish_handoffs(&self, rows: Vec<OutboxRow>) {
        if rows.is_empty() {
            return;
        }
        let results = futures::future::join_all(rows.iter().map(|row| async move {
            let id = row.id.to_string();
            let result = shared::calls::publish_outbox_row(
                &self.js,
                &self.subjects,
                row,
                &id,
                Duration::from_secs(5),
            )
            .await;
            if let Err(err) = &result {
                tracing::warn!(event_id = %row.id, %err, "handoff publish failed; the relay will retry");
            }
            (row.id, result.is_ok())
        }))
        .await;
        let acked: Vec<Uuid> = results
            .into_iter()
            .filter_map(|(id, ok)| ok.then_some(id))
            .collect();
        if let Err(err) = shared::calls::mark_published(&self.pool, &acked).await {
            tracing::warn!(%err, "cannot mark handoffs published");
        }
    }
}

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
                      WHEN $3 = 'completed' AND $5::int > 0 THEN $4 - make_interval(secs => $5::int)
                 END),
             ended_at = COALESCE(ended_at, CASE WHEN $2::int = 3 THEN $4 END),
             duration_seconds = COALESCE(duration_seconds, $5),
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
