//! `runtime.events.<tenant>.<call_id>` from the voice runtime into the
//! call's timeline and transcript, idempotently by the event's id, under
//! the tenant's storage mode (`shared::redaction`).

use async_nats::jetstream;
use shared::calls::{RuntimeEvent, RuntimeEventData};
use shared::nats::Subjects;
use shared::redaction::DataStorage;
use sqlx::PgPool;

use shared::consumer::Outcome;

pub async fn handle(
    pool: PgPool,
    subjects: Subjects,
    message: jetstream::Message,
) -> (jetstream::Message, Outcome) {
    let outcome = match serde_json::from_slice::<RuntimeEvent>(&message.payload) {
        // The reason is logged; serde quotes what it refused.
        Err(err) => Outcome::Reject(format!(
            "malformed runtime event: {}",
            shared::redaction::redact_text(&err.to_string())
        )),
        Ok(event) => {
            // The subject names the tenant and call; a body claiming others
            // is not trusted.
            if message.subject.as_str() != subjects.runtime_events(event.tenant_id, event.call_id) {
                Outcome::Reject("subject does not match the event's tenant and call".into())
            } else {
                match event.parse_data() {
                    Err(reason) => Outcome::Reject(reason),
                    Ok(data) => match store(&pool, &event, &data).await {
                        Ok(outcome) => outcome,
                        Err(err) => Outcome::Retry(err.to_string()),
                    },
                }
            }
        }
    };
    (message, outcome)
}

async fn store(
    pool: &PgPool,
    event: &RuntimeEvent,
    data: &RuntimeEventData,
) -> Result<Outcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The tenant's storage mode now: what of the event may be kept.
    let mode: Option<DataStorage> = sqlx::query_scalar(
        "SELECT t.data_storage FROM call_sessions s JOIN tenants t ON t.id = s.tenant_id
         WHERE s.id = $1 AND s.tenant_id IS NOT DISTINCT FROM $2",
    )
    .bind(event.call_id)
    .bind(event.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(mode) = mode else {
        return Ok(Outcome::Reject(format!(
            "no call {} in tenant {}",
            event.call_id, event.tenant_id
        )));
    };
    let payload = mode.payload(&event.data);
    // The event id is the row id and the idempotency key: a redelivery hits
    // the conflict and adds nothing.
    let inserted: Option<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, occurred_at, processed_at)
         VALUES ($1, $3, $2, $4, $1::text, $5, $6, now())
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
    .bind(event.event_id)
    .bind(event.call_id)
    .bind(event.tenant_id)
    .bind(&event.kind)
    .bind(payload.as_ref())
    .bind(event.occurred_at)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        return Ok(Outcome::Done);
    }
    match data {
        RuntimeEventData::TranscriptSegment {
            speaker,
            text,
            start_ms,
            end_ms,
        } => {
            // `basic_attributes_only` keeps no transcript.
            if let Some((text, redacted)) = mode.text(text) {
                sqlx::query(
                    "INSERT INTO transcript_segments (id, tenant_id, call_id, speaker, text, start_ms, end_ms, occurred_at, redacted)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(event.event_id)
                .bind(event.tenant_id)
                .bind(event.call_id)
                .bind(speaker)
                .bind(text.as_ref())
                .bind(start_ms)
                .bind(end_ms)
                .bind(event.occurred_at)
                .bind(redacted)
                .execute(&mut *tx)
                .await?;
            }
        }
        RuntimeEventData::CallEnded { .. } => {
            sqlx::query(
                "UPDATE call_sessions SET ended_at = COALESCE(ended_at, $2), updated_at = now() WHERE id = $1",
            )
            .bind(event.call_id)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
        }
        RuntimeEventData::RuntimeError { .. } => {}
    }
    tx.commit().await?;
    metrics::counter!("dispatch_runtime_events_total", "type" => event.kind.clone()).increment(1);
    Ok(Outcome::Done)
}
