//! Durability first: a webhook's call session and its outbox event are
//! committed before Twilio gets an answer.
//!
//! Writes go through a few writer tasks. Each takes every webhook already
//! waiting (up to a limit) and commits them in ONE transaction, so under load
//! many calls share one WAL flush (group commit) while a lone webhook is
//! written at once. If any statement of a group fails, the group is rolled
//! back and each webhook is retried in its own transaction, so one bad row
//! never fails its neighbours.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use shared::calls::OutboxRow;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

/// What a new session needs when the callback is the first we hear of a
/// call (always for `call.inbound`).
#[derive(Debug, Clone)]
pub struct SessionSeed {
    pub tenant_id: Uuid,
    pub phone_number_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub account_sid: Option<String>,
    pub from: String,
    pub to: String,
    pub direction: String,
}

/// One webhook to persist: the session (upserted by `CallSid`) and its event.
#[derive(Debug, Clone)]
pub struct CallWrite {
    pub call_sid: String,
    /// `None`: only attach the event to an existing session.
    pub seed: Option<SessionSeed>,
    pub event_id: Uuid,
    pub kind: &'static str,
    pub idempotency_key: String,
    pub payload: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum Stored {
    /// The session exists; `new_event` is `None` when the event was already
    /// recorded (a Twilio retry).
    Call {
        call_id: Uuid,
        tenant_id: Uuid,
        new_event: Option<OutboxRow>,
    },
    /// No session with this `CallSid` and nothing to create one from.
    UnknownCall,
}

pub type StoreResult = Result<Stored, String>;

#[derive(sqlx::FromRow)]
struct WriteRow {
    call_id: Uuid,
    tenant_id: Uuid,
    event_id: Option<Uuid>,
}

const UPSERT_SESSION_AND_EVENT: &str = "
WITH s AS (
    INSERT INTO call_sessions (id, tenant_id, call_sid, account_sid, phone_number_id, agent_id,
                               from_number, to_number, direction, started_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $14)
    ON CONFLICT (call_sid) DO UPDATE SET updated_at = now()
    RETURNING id, tenant_id
), e AS (
    INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, needs_publish, occurred_at)
    SELECT $10, s.tenant_id, s.id, $11, $12, $13, true, $14 FROM s
    ON CONFLICT (call_id, idempotency_key) DO NOTHING
    RETURNING id
)
SELECT s.id AS call_id, s.tenant_id, (SELECT id FROM e) AS event_id FROM s";

const EVENT_FOR_EXISTING_SESSION: &str = "
WITH s AS (
    SELECT id, tenant_id FROM call_sessions WHERE call_sid = $1
), e AS (
    INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, needs_publish, occurred_at)
    SELECT $2, s.tenant_id, s.id, $3, $4, $5, true, $6 FROM s
    ON CONFLICT (call_id, idempotency_key) DO NOTHING
    RETURNING id
)
SELECT s.id AS call_id, s.tenant_id, (SELECT id FROM e) AS event_id FROM s";

/// Runs one webhook's statement on `conn` (inside the caller's transaction).
pub async fn write_one(conn: &mut PgConnection, w: &CallWrite) -> Result<Stored, sqlx::Error> {
    let row: Option<WriteRow> = match &w.seed {
        Some(seed) => {
            sqlx::query_as(UPSERT_SESSION_AND_EVENT)
                .bind(Uuid::now_v7())
                .bind(seed.tenant_id)
                .bind(&w.call_sid)
                .bind(&seed.account_sid)
                .bind(seed.phone_number_id)
                .bind(seed.agent_id)
                .bind(&seed.from)
                .bind(&seed.to)
                .bind(&seed.direction)
                .bind(w.event_id)
                .bind(w.kind)
                .bind(&w.idempotency_key)
                .bind(&w.payload)
                .bind(w.occurred_at)
                .fetch_optional(&mut *conn)
                .await?
        }
        None => {
            sqlx::query_as(EVENT_FOR_EXISTING_SESSION)
                .bind(&w.call_sid)
                .bind(w.event_id)
                .bind(w.kind)
                .bind(&w.idempotency_key)
                .bind(&w.payload)
                .bind(w.occurred_at)
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    Ok(match row {
        None => Stored::UnknownCall,
        Some(row) => Stored::Call {
            call_id: row.call_id,
            tenant_id: row.tenant_id,
            new_event: row.event_id.map(|id| OutboxRow {
                id,
                tenant_id: row.tenant_id,
                call_id: row.call_id,
                kind: w.kind.to_owned(),
                occurred_at: w.occurred_at,
                payload: w.payload.clone(),
            }),
        },
    })
}

struct Job {
    write: CallWrite,
    reply: oneshot::Sender<StoreResult>,
}

/// The handle handlers submit writes through.
#[derive(Clone)]
pub struct CallStore {
    jobs: mpsc::Sender<Job>,
}

impl CallStore {
    /// Starts `writers` writer tasks, each committing up to `max_group`
    /// webhooks per transaction. They stop when every handle is dropped.
    pub fn start(pool: PgPool, writers: usize, max_group: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(max_group * writers * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let rx = rx.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    let group = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { break };
                        let mut group = vec![first];
                        while group.len() < max_group {
                            match rx.try_recv() {
                                Ok(job) => group.push(job),
                                Err(_) => break,
                            }
                        }
                        group
                    };
                    commit_group(&pool, group).await;
                }
            });
        }
        Self { jobs: tx }
    }

    /// Persists `write`; returns once it is committed (or failed).
    pub async fn write(&self, write: CallWrite) -> StoreResult {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { write, reply })
            .await
            .map_err(|_| "store is shut down".to_owned())?;
        answer
            .await
            .map_err(|_| "writer stopped before answering".to_owned())?
    }
}

async fn commit_group(pool: &PgPool, group: Vec<Job>) {
    metrics::histogram!("ingress_group_commit_size").record(group.len() as f64);
    if group.len() > 1 {
        match try_group(pool, &group).await {
            Ok(results) => {
                for (job, result) in group.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
                return;
            }
            Err(err) => {
                tracing::warn!(%err, size = group.len(), "group commit failed; retrying one by one");
            }
        }
    }
    for job in group {
        let result = try_single(pool, &job.write)
            .await
            .map_err(|e| e.to_string());
        let _ = job.reply.send(result);
    }
}

async fn try_group(pool: &PgPool, group: &[Job]) -> Result<Vec<Stored>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        results.push(write_one(&mut tx, &job.write).await?);
    }
    tx.commit().await?;
    Ok(results)
}

async fn try_single(pool: &PgPool, write: &CallWrite) -> Result<Stored, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let stored = write_one(&mut tx, write).await?;
    tx.commit().await?;
    Ok(stored)
}
