//! `runtime.events.<tenant>.<call_id>` from the voice runtime into the
//! call's timeline and transcript, idempotently by the event's id.

use async_nats::jetstream;
use shared::calls::{RuntimeEvent, RuntimeEventData};
use shared::nats::Subjects;
use sqlx::PgPool;

use shared::consumer::Outcome;

pub async fn handle(
    pool: PgPool,
    subjects: Subjects,
    message: jetstream::Message,
) -> (jetstream::Message, Outcome) {
    let outcome = match serde_json::from_slice::<RuntimeEvent>(&message.payload) {
        Err(err) => Outcome::Reject(format!("malformed runtime event: {err}")),
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
    // The event id is the row id and the idempotency key: a redelivery hits
    // the conflict and adds nothing.
    let inserted: Option<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, occurred_at, processed_at)
         SELECT $1, s.tenant_id, s.id, $4, $1::text, $5, $6, now()
         FROM call_sessions s WHERE s.id = $2 AND s.tenant_id IS NOT DISTINCT FROM $3
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
    .bind(event.event_id)
    .bind(event.call_id)
    .bind(event.tenant_id)
    .bind(&event.kind)
    .bind(&event.data)
    .bind(event.occurred_at)
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_none() {
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM call_sessions WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2)",
        )
        .bind(event.call_id)
        .bind(event.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        return Ok(if known {
            Outcome::Done
        } else {
            Outcome::Reject(format!(
                "no call {} in tenant {}",
                event.call_id, event.tenant_id
            ))
        });
    }
    match data {
        RuntimeEventData::TranscriptSegment {
            speaker,
            text,
            start_ms,
            end_ms,
        } => {
            sqlx::query(
                "INSERT INTO transcript_segments (id, tenant_id, call_id, speaker, text, start_ms, end_ms, occurred_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(event.event_id)
            .bind(event.tenant_id)
            .bind(event.call_id)
            .bind(speaker)
            .bind(text)
            .bind(start_ms)
            .bind(end_ms)
            .bind(event.occurred_at)
            .execute(&mut *tx)
            .await?;
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
