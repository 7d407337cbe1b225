//! Message bodies of flow 1 on NATS (DESIGN.md "Messages on NATS") and the
//! call-event types of the outbox.
//!
//! Every outbox row (`call_events` with `needs_publish`) becomes one message:
//! `call.*` events travel as a [`CallEventMessage`] on `calls.<kind>.<tenant>`,
//! a `runtime.handoff_requested` event as its payload, a [`HandoffRequested`],
//! on `runtime.handoff_requested.<tenant>`. The message id (`Nats-Msg-Id`) is
//! the event id, so JetStream drops duplicate publishes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::nats::Subjects;

/// `call_events.type` values.
pub mod event_type {
    pub const CALL_INBOUND: &str = "call.inbound";
    pub const CALL_STATUS: &str = "call.status";
    pub const CALL_RECORDING: &str = "call.recording";
    pub const HANDOFF_REQUESTED: &str = "runtime.handoff_requested";
    pub const DISPATCH_EXPIRED: &str = "runtime.dispatch_expired";
}

/// `type` values of the events a voice runtime publishes ([`RuntimeEvent`]).
pub mod runtime_event_type {
    pub const TRANSCRIPT_SEGMENT: &str = "transcript.segment";
    pub const CALL_ENDED: &str = "call.ended";
    pub const RUNTIME_ERROR: &str = "runtime.error";
}

/// A Twilio callback as the ingress stored it: the event's identity and the
/// form parameters Twilio sent (all of them, as strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEventMessage {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

/// `runtime.handoff_requested.<tenant_id>`: a call waiting for a voice
/// runtime. Never carries the join token; the runtime claims it by
/// `dispatch_id` through the api.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HandoffRequested {
    /// What the runtime claims (`POST /internal/runtime/dispatches/claim`).
    pub dispatch_id: Uuid,
    pub call_id: Uuid,
    /// Twilio's CallSid.
    pub call_sid: String,
    pub tenant_id: Uuid,
    pub agent_id: Option<Uuid>,
    /// The agent version active when the call rang: the configuration to run.
    pub agent_version_id: Option<Uuid>,
    /// The version's number.
    pub agent_version: Option<i32>,
    /// The caller's number (E.164).
    pub from: String,
    /// The number called (E.164).
    pub to: String,
    /// The dispatch can be claimed until then; after it, the claim answers 410.
    pub expires_at: DateTime<Utc>,
}

/// `runtime.events.<tenant_id>.<call_id>`, published by the voice runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RuntimeEvent {
    /// The idempotency key: an event published twice is stored once. Send it
    /// as `Nats-Msg-Id` too, so the stream drops the duplicate.
    pub event_id: Uuid,
    /// `transcript.segment`, `call.ended` or `runtime.error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub call_id: Uuid,
    pub tenant_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// The type's data: [`TranscriptSegment`], [`CallEnded`] or
    /// [`RuntimeError`]; at most 64 KiB of JSON.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// `data` of a `transcript.segment` event: one utterance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TranscriptSegment {
    /// `caller` or `agent`.
    #[schema(pattern = "^(caller|agent)$")]
    pub speaker: String,
    /// At most 16 KiB.
    pub text: String,
    /// From the start of the conversation.
    #[schema(minimum = 0)]
    pub start_ms: i32,
    /// At least `start_ms`.
    #[schema(minimum = 0)]
    pub end_ms: i32,
}

/// `data` of a `call.ended` event: the runtime's conversation is over. The
/// call itself ends with Twilio's status callback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CallEnded {
    /// Free text, e.g. `caller_hung_up`, `conversation_complete`.
    pub reason: String,
}

/// `data` of a `runtime.error` event: shown on the call's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RuntimeError {
    pub message: String,
}

/// The typed `data` of the runtime event kinds this system understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEventData {
    TranscriptSegment {
        speaker: String,
        text: String,
        start_ms: i32,
        end_ms: i32,
    },
    CallEnded {
        reason: String,
    },
    RuntimeError {
        message: String,
    },
}

/// Largest `data` of a runtime event, in bytes of JSON: every event is a
/// timeline row that each timeline read returns.
pub const MAX_RUNTIME_EVENT_DATA_BYTES: usize = 64 * 1024;

/// Longest transcript segment text, in bytes: an utterance is seconds of
/// speech; a segment this long is a runtime bug or abuse, not a caller.
pub const MAX_TRANSCRIPT_TEXT_BYTES: usize = 16 * 1024;

impl RuntimeEvent {
    /// The typed data, or why the event is malformed.
    pub fn parse_data(&self) -> Result<RuntimeEventData, String> {
        let data = serde_json::to_string(&self.data).unwrap_or_default();
        if data.len() > MAX_RUNTIME_EVENT_DATA_BYTES {
            return Err(format!(
                "data is {} bytes of JSON; at most {MAX_RUNTIME_EVENT_DATA_BYTES}",
                data.len()
            ));
        }
        // What Postgres cannot store would be retried forever: refuse it.
        if data.contains("\\u0000") {
            return Err("data contains a NUL character".into());
        }
        if !(1..=9999).contains(&chrono::Datelike::year(&self.occurred_at)) {
            return Err("occurred_at is out of range".into());
        }
        let text_field = |name: &str| -> Result<String, String> {
            Ok(self
                .data
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned())
        };
        match self.kind.as_str() {
            runtime_event_type::TRANSCRIPT_SEGMENT => {
                let d: TranscriptSegment = serde_json::from_value(self.data.clone())
                    // The reason is logged: serde quotes the value it
                    // refused, which may be personal data.
                    .map_err(|e| {
                        let e = e.to_string();
                        format!(
                            "transcript.segment data: {}",
                            crate::redaction::redact_text(&e)
                        )
                    })?;
                if d.speaker != "caller" && d.speaker != "agent" {
                    return Err("speaker must be caller or agent".into());
                }
                if d.start_ms < 0 || d.end_ms < d.start_ms {
                    return Err("need 0 <= start_ms <= end_ms".into());
                }
                if d.text.len() > MAX_TRANSCRIPT_TEXT_BYTES {
                    return Err(format!(
                        "transcript text is {} bytes; at most {MAX_TRANSCRIPT_TEXT_BYTES}",
                        d.text.len()
                    ));
                }
                Ok(RuntimeEventData::TranscriptSegment {
                    speaker: d.speaker,
                    text: d.text,
                    start_ms: d.start_ms,
                    end_ms: d.end_ms,
                })
            }
            runtime_event_type::CALL_ENDED => Ok(RuntimeEventData::CallEnded {
                reason: text_field("reason")?,
            }),
            runtime_event_type::RUNTIME_ERROR => Ok(RuntimeEventData::RuntimeError {
                message: text_field("message")?,
            }),
            other => Err(format!("unknown runtime event type {other:?}")),
        }
    }
}

/// Where an outbox event of `kind` is published, or `None` for kinds that
/// are timeline-only.
pub fn outbox_subject(subjects: &Subjects, kind: &str, tenant_id: Uuid) -> Option<String> {
    match kind {
        event_type::CALL_INBOUND => Some(subjects.calls_inbound(tenant_id)),
        event_type::CALL_STATUS => Some(subjects.calls_status(tenant_id)),
        event_type::CALL_RECORDING => Some(subjects.calls_recording(tenant_id)),
        event_type::HANDOFF_REQUESTED => Some(subjects.runtime_handoff_requested(tenant_id)),
        _ => None,
    }
}

/// The body published for an outbox row.
pub fn outbox_body(
    event_id: Uuid,
    kind: &str,
    tenant_id: Uuid,
    call_id: Uuid,
    occurred_at: DateTime<Utc>,
    payload: &serde_json::Value,
) -> Result<Vec<u8>, serde_json::Error> {
    if kind == event_type::HANDOFF_REQUESTED {
        serde_json::to_vec(payload)
    } else {
        serde_json::to_vec(&CallEventMessage {
            event_id,
            kind: kind.to_owned(),
            tenant_id,
            call_id,
            occurred_at,
            payload: payload.clone(),
        })
    }
}

/// An outbox row (`call_events` with `needs_publish`) ready to publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
    /// The W3C `traceparent` of the request that caused the event (column
    /// `trace_id`), sent on as a NATS header.
    #[sqlx(rename = "trace_id", default)]
    pub traceparent: Option<String>,
}

/// Publishes `row` to JetStream with `msg_id` as `Nats-Msg-Id` and waits (at
/// most `timeout`) for the stream's ack.
pub async fn publish_outbox_row(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    row: &OutboxRow,
    msg_id: &str,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let subject = outbox_subject(subjects, &row.kind, row.tenant_id)
        .ok_or_else(|| format!("event type {} is not published", row.kind))?;
    let body = outbox_body(
        row.id,
        &row.kind,
        row.tenant_id,
        row.call_id,
        row.occurred_at,
        &row.payload,
    )
    .map_err(|e| e.to_string())?;
    let mut publish = async_nats::jetstream::message::PublishMessage::build()
        .payload(body.into())
        .message_id(msg_id);
    if let Some(trace) = row
        .traceparent
        .as_deref()
        .and_then(crate::trace::TraceContext::parse)
    {
        publish = publish.header(
            crate::trace::TRACEPARENT,
            trace.child().to_string().as_str(),
        );
    }
    let ack = async {
        let future = js
            .send_publish(subject, publish)
            .await
            .map_err(|e| e.to_string())?;
        future.await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, ack).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no ack within {timeout:?}")),
    }
}

/// Which outbox events a publish round got into JetStream and which it did
/// not, by event id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    pub acked: Vec<Uuid>,
    pub failed: Vec<Uuid>,
}

impl PublishOutcome {
    pub fn len(&self) -> usize {
        self.acked.len() + self.failed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn extend(&mut self, other: PublishOutcome) {
        self.acked.extend(other.acked);
        self.failed.extend(other.failed);
    }
}

/// Publishes each row under its `Nats-Msg-Id`, all at once, waiting at most
/// `timeout` for each ack.
pub async fn publish_rows(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    rows: &[(OutboxRow, String)],
    timeout: std::time::Duration,
) -> PublishOutcome {
    let results = futures::future::join_all(rows.iter().map(|(row, msg_id)| async move {
        let result = publish_outbox_row(js, subjects, row, msg_id, timeout).await;
        if let Err(err) = &result {
            tracing::warn!(event_id = %row.id, %err, "publish failed; the relay will retry");
        }
        (row.id, result.is_ok())
    }))
    .await;
    let mut outcome = PublishOutcome::default();
    for (id, ok) in results {
        if ok {
            outcome.acked.push(id);
        } else {
            outcome.failed.push(id);
        }
    }
    outcome
}

/// Records a publish round in one statement (`record_publishes`, migration
/// 0022; one round trip, no BEGIN/COMMIT, no wait for the WAL flush: a lost
/// record only means one more deduplicated publish): acked events are
/// marked published (handoff events have no consumer in this system that
/// reports back, so publishing them also completes them), every attempt is
/// counted, and any relay lease is released.
pub async fn record_publishes(
    pool: &sqlx::PgPool,
    outcome: &PublishOutcome,
) -> Result<(), sqlx::Error> {
    if outcome.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT record_publishes($1, $2)")
        .bind(&outcome.acked)
        .bind(&outcome.failed)
        .execute(pool)
        .await?;
    Ok(())
}

/// Publishes `rows` and records the outcome at once; returns how many were
/// acked. The relay's round: it must release its leases before its next.
pub async fn publish_and_record(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    pool: &sqlx::PgPool,
    rows: &[(OutboxRow, String)],
    timeout: std::time::Duration,
) -> Result<usize, sqlx::Error> {
    let outcome = publish_rows(js, subjects, rows, timeout).await;
    record_publishes(pool, &outcome).await?;
    Ok(outcome.acked.len())
}

/// The associated data that binds a sealed join token to its dispatch, so a
/// ciphertext copied into another row does not open.
pub fn join_token_aad(dispatch_id: Uuid) -> Vec<u8> {
    format!("runtime_dispatches:{dispatch_id}").into_bytes()
}

/// Twilio's call statuses in lifecycle order; a callback may only move a
/// call forward (terminal statuses are final).
pub fn status_rank(status: &str) -> Option<u8> {
    match status {
        "queued" => Some(0),
        "ringing" => Some(1),
        "in-progress" => Some(2),
        "completed" | "busy" | "failed" | "no-answer" | "canceled" => Some(3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handoff_has_exactly_the_designed_fields() {
        let h = HandoffRequested {
            dispatch_id: Uuid::nil(),
            call_id: Uuid::nil(),
            call_sid: "CA1".into(),
            tenant_id: Uuid::nil(),
            agent_id: None,
            agent_version_id: None,
            agent_version: Some(3),
            from: "+1".into(),
            to: "+2".into(),
            expires_at: Utc::now(),
        };
        let v = serde_json::to_value(&h).expect("json");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "agent_id",
                "agent_version",
                "agent_version_id",
                "call_id",
                "call_sid",
                "dispatch_id",
                "expires_at",
                "from",
                "tenant_id",
                "to"
            ]
        );
    }

    #[test]
    fn runtime_event_data_parses_and_rejects() {
        let ev = |kind: &str, data: serde_json::Value| RuntimeEvent {
            event_id: Uuid::nil(),
            kind: kind.into(),
            call_id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            occurred_at: Utc::now(),
            data,
        };
        assert_eq!(
            ev(
                "transcript.segment",
                json!({"speaker":"caller","text":"hi","start_ms":0,"end_ms":10})
            )
            .parse_data(),
            Ok(RuntimeEventData::TranscriptSegment {
                speaker: "caller".into(),
                text: "hi".into(),
                start_ms: 0,
                end_ms: 10
            })
        );
        assert!(
            ev(
                "transcript.segment",
                json!({"speaker":"bot","text":"hi","start_ms":0,"end_ms":10})
            )
            .parse_data()
            .is_err()
        );
        assert!(
            ev(
                "transcript.segment",
                json!({"speaker":"agent","text":"hi","start_ms":10,"end_ms":1})
            )
            .parse_data()
            .is_err()
        );
        assert!(ev("nope", json!({})).parse_data().is_err());
        // Size caps: the longest segment passes, one byte more does not, and
        // no event carries more than its data cap.
        let segment = |text: String| {
            ev(
                "transcript.segment",
                json!({"speaker":"agent","text":text,"start_ms":0,"end_ms":1}),
            )
            .parse_data()
        };
        assert!(segment("a".repeat(MAX_TRANSCRIPT_TEXT_BYTES)).is_ok());
        let refused = segment("a".repeat(MAX_TRANSCRIPT_TEXT_BYTES + 1)).expect_err("too long");
        assert!(refused.contains("at most 16384"), "{refused}");
        let huge = json!({"reason": "x".repeat(MAX_RUNTIME_EVENT_DATA_BYTES)});
        assert!(ev("call.ended", huge).parse_data().is_err());
        // Nothing Postgres would refuse (and the consumer retry forever).
        assert!(
            ev("call.ended", json!({"reason":"hang\u{0}up"}))
                .parse_data()
                .is_err()
        );
        let mut ancient = ev("call.ended", json!({"reason":"hangup"}));
        ancient.occurred_at = DateTime::<Utc>::MIN_UTC;
        assert!(ancient.parse_data().is_err());
        assert_eq!(
            ev("call.ended", json!({"reason":"hangup"})).parse_data(),
            Ok(RuntimeEventData::CallEnded {
                reason: "hangup".into()
            })
        );
    }

    #[test]
    fn statuses_only_move_forward() {
        assert!(status_rank("ringing") < status_rank("in-progress"));
        assert!(status_rank("in-progress") < status_rank("completed"));
        assert_eq!(status_rank("busy"), status_rank("completed"));
        assert_eq!(status_rank("weird"), None);
    }
}
