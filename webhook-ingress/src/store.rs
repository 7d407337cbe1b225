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
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use shared::calls::{OutboxRow, event_type};
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
    /// The tenant's storage mode `from` and `to` were masked under.
    pub data_storage: shared::redaction::DataStorage,
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
    /// The request's W3C trace context, stored with the event and sent on.
    pub traceparent: String,
}

#[derive(Debug, Clone)]
pub enum Stored {
    /// The session exists; `new_event` is `None` when the event was already
    /// recorded (a Twilio retry).
    Call {
        call_id: Uuid,
        tenant_id: Uuid,
        new_event: Option<OutboxRow>,
        /// The call was refused at ring time (its tenant or agent was at its
        /// concurrent-call limit); a retry of it stays refused.
        rejected: bool,
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
    rejected: bool,
}

const EVENT_FOR_EXISTING_SESSION: &str = "
WITH s AS (
    SELECT id, tenant_id, rejected_reason FROM call_sessions WHERE call_sid = $1
), e AS (
    INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, needs_publish, occurred_at, trace_id)
    SELECT $2, s.tenant_id, s.id, $3, $4, $5, true, $6, $7 FROM s
    ON CONFLICT (call_id, idempotency_key) DO NOTHING
    RETURNING id
)
SELECT s.id AS call_id, s.tenant_id, (SELECT id FROM e) AS event_id,
       s.rejected_reason IS NOT NULL AS rejected
FROM s";

/// Runs one webhook's statement on `conn` (inside the caller's transaction,
/// if any).
pub async fn write_one(conn: &mut PgConnection, w: &CallWrite) -> Result<Stored, sqlx::Error> {
    if w.seed.is_some() {
        return upsert_many(conn, &[w])
            .await?
            .pop()
            .ok_or_else(|| sqlx::Error::Protocol("upsert returned no row".into()));
    }
    let row: Option<WriteRow> = sqlx::query_as(EVENT_FOR_EXISTING_SESSION)
        .bind(&w.call_sid)
        .bind(w.event_id)
        .bind(w.kind)
        .bind(&w.idempotency_key)
        .bind(&w.payload)
        .bind(w.occurred_at)
        .bind(&w.traceparent)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map_or(Stored::UnknownCall, |row| row.stored(w)))
}

impl WriteRow {
    /// The webhook's outcome; the outbox row only when its event is new.
    fn stored(self, w: &CallWrite) -> Stored {
        Stored::Call {
            call_id: self.call_id,
            tenant_id: self.tenant_id,
            rejected: self.rejected,
            new_event: self.event_id.map(|id| OutboxRow {
                id,
                tenant_id: self.tenant_id,
                call_id: self.call_id,
                kind: w.kind.to_owned(),
                occurred_at: w.occurred_at,
                payload: w.payload.clone(),
                traceparent: Some(w.traceparent.clone()),
            }),
        }
    }
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
    /// webhooks per transaction, and waiting up to `linger` after a group's
    /// first webhook for more. They stop when every handle is dropped.
    pub fn start(pool: PgPool, writers: usize, max_group: usize, linger: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<Job>(max_group * writers * 4);
        // One stream of groups, taken in turn: the writer holding it while
        // a group forms gets every webhook arriving meanwhile, rather than
        // the other writer starting a group of its own. Without the linger,
        // at moderate rates a group holds one or two webhooks, and the
        // statement's fixed cost (most of its cost) is paid per call.
        let groups = Arc::new(Mutex::new(shared::consumer::batches(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            max_group,
            linger,
        )));
        for _ in 0..writers.max(1) {
            let groups = groups.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    let Some(group) = groups.lock().await.next().await else {
                        break;
                    };
                    let started = std::time::Instant::now();
                    commit_group(&pool, group).await;
                    metrics::histogram!("ingress_group_commit_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
            });
        }
        Self { jobs: tx }
    }

    /// Persists `write`; returns once it is committed (or failed).
    pub async fn write(&self, write: CallWrite) -> StoreResult {
        let submitted = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { write, reply })
            .await
            .map_err(|_| "store is shut down".to_owned())?;
        let stored = answer
            .await
            .map_err(|_| "writer stopped before answering".to_owned())?;
        // Waiting for a writer plus the group's commit: what a webhook's
        // durability costs it.
        metrics::histogram!("ingress_store_seconds").record(submitted.elapsed().as_secs_f64());
        stored
    }
}

async fn commit_group(pool: &PgPool, group: Vec<Job>) {
    metrics::histogram!("ingress_group_commit_size").record(group.len() as f64);
    if group.len() > 1 {
        let writes: Vec<&CallWrite> = group.iter().map(|job| &job.write).collect();
        match write_group(pool, &writes).await {
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

/// Commits `writes` together: one transaction, results in order.
pub async fn write_group(pool: &PgPool, writes: &[&CallWrite]) -> Result<Vec<Stored>, sqlx::Error> {
    // A group of new calls only (the common case) is one statement, atomic
    // on its own: no BEGIN and COMMIT round trips around it.
    if writes.iter().all(|w| w.seed.is_some()) {
        let mut conn = pool.acquire().await?;
        return upsert_many(&mut conn, writes).await;
    }
    let mut tx = pool.begin().await?;
    let seeded: Vec<&CallWrite> = writes
        .iter()
        .copied()
        .filter(|w| w.seed.is_some())
        .collect();
    let mut seeded_results = upsert_many(&mut tx, &seeded).await?.into_iter();
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        if w.seed.is_some() {
            results.push(
                seeded_results
                    .next()
                    .ok_or_else(|| sqlx::Error::Protocol("group upsert lost a row".into()))?,
            );
        } else {
            results.push(write_one(&mut tx, w).await?);
        }
    }
    tx.commit().await?;
    Ok(results)
}

/// Upserts the sessions of many webhooks (by `CallSid`) and appends their
/// events (unique per call and idempotency key, so Twilio's retries add
/// nothing) in ONE statement: one round trip per group. A CallSid named
/// twice in a group (an inbound webhook and its first status callback, or a
/// retry) creates its session from the first webhook, since Postgres cannot
/// upsert one row twice in a statement; each webhook still gets its event.
///
/// A new session is pinned to its agent's active version as it rings: the
/// version that answers it, whatever is published while it is dispatched.
///
/// A new inbound call is admitted against its tenant's and agent's
/// concurrent-call limits in the same statement (`admit_inbound_calls`,
/// migration 0015, over `$16..$18`: the group's inbound calls, each CallSid
/// once): admitted calls are `live`, refused ones are `rejected` (ended at
/// once, with `rejected_reason`), and the calls admitted live are added to
/// the live-call counters admission reads (migration 0024). An existing
/// session keeps what it was given. When no tenant or agent of the group
/// has a limit (the common case), every inbound call is admitted and the
/// function, five statements of its own, is not run: the gate reads each
/// limit by primary key, as the function's own first read does, without a
/// lock.
const UPSERT_MANY: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::uuid[],
                         $7::text[], $8::text[], $9::text[], $10::uuid[], $11::text[], $12::text[],
                         $13::jsonb[], $14::timestamptz[], $15::text[], $19::text[])
        WITH ORDINALITY AS t(session_id, tenant_id, call_sid, account_sid, phone_number_id, agent_id,
                             from_number, to_number, direction, event_id, type, idempotency_key,
                             payload, occurred_at, trace_id, data_storage, ord)
), admission AS (
    SELECT * FROM admit_inbound_calls($16::text[], $17::uuid[], $18::uuid[])
    WHERE EXISTS (SELECT 1 FROM unnest($17::uuid[]) AS u(id)
                  WHERE (SELECT max_concurrent_calls FROM tenants WHERE id = u.id) IS NOT NULL)
       OR EXISTS (SELECT 1 FROM unnest($18::uuid[]) AS u(id)
                  WHERE (SELECT max_concurrent_calls FROM agents WHERE id = u.id) IS NOT NULL)
), s AS (
    INSERT INTO call_sessions (id, tenant_id, call_sid, account_sid, phone_number_id, agent_id,
                               agent_version_id, from_number, to_number, direction, started_at,
                               live, status, rejected_reason, ended_at, data_storage)
    SELECT DISTINCT ON (i.call_sid) i.session_id, i.tenant_id, i.call_sid, i.account_sid,
           i.phone_number_id, i.agent_id,
           (SELECT g.active_version_id FROM agents g
            WHERE g.id = i.agent_id AND g.tenant_id IS NOT DISTINCT FROM i.tenant_id),
           i.from_number, i.to_number, i.direction, i.occurred_at,
           -- Without an admission row: admitted if it is an inbound call
           -- (no limit applies), not live if only a callback made it.
           COALESCE(a.admitted, i.call_sid = ANY ($16::text[])),
           CASE WHEN NOT a.admitted THEN 'rejected' ELSE 'ringing' END,
           CASE WHEN NOT a.admitted THEN 'capacity' END,
           CASE WHEN NOT a.admitted THEN i.occurred_at END,
           i.data_storage
    FROM input i LEFT JOIN admission a ON a.call_sid = i.call_sid
    ORDER BY i.call_sid, i.ord
    ON CONFLICT (call_sid) DO UPDATE SET updated_at = now()
    RETURNING id, tenant_id, agent_id, call_sid, rejected_reason, live
), admitted AS (
    -- The calls this statement inserted live (an existing session keeps its
    -- own id) where a limit applies: the live-call counters of their tenant
    -- and agent count them, under the lock admission took.
    SELECT s.tenant_id, s.agent_id FROM s
    WHERE s.live AND s.id = ANY ($1::uuid[]) AND EXISTS (SELECT 1 FROM admission)
), tenants_counted AS (
    UPDATE tenants t SET live_calls = t.live_calls
        + (SELECT count(*) FROM admitted a WHERE a.tenant_id = t.id)
    WHERE t.id = ANY (ARRAY(SELECT DISTINCT tenant_id FROM admitted))
      AND t.max_concurrent_calls IS NOT NULL
), agents_counted AS (
    UPDATE agents g SET live_calls = g.live_calls
        + (SELECT count(*) FROM admitted a WHERE a.agent_id = g.id)
    WHERE g.id = ANY (ARRAY(SELECT DISTINCT agent_id FROM admitted WHERE agent_id IS NOT NULL))
      AND g.max_concurrent_calls IS NOT NULL
), e AS (
    INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, needs_publish, occurred_at, trace_id)
    SELECT i.event_id, s.tenant_id, s.id, i.type, i.idempotency_key, i.payload, true, i.occurred_at, i.trace_id
    FROM input i JOIN s ON s.call_sid = i.call_sid
    ON CONFLICT (call_id, idempotency_key) DO NOTHING
    RETURNING id
)
SELECT s.id AS call_id, s.tenant_id,
       CASE WHEN i.event_id IN (SELECT id FROM e) THEN i.event_id END AS event_id,
       s.rejected_reason IS NOT NULL AS rejected
FROM input i JOIN s ON s.call_sid = i.call_sid
ORDER BY i.ord";

async fn upsert_many(
    conn: &mut PgConnection,
    writes: &[&CallWrite],
) -> Result<Vec<Stored>, sqlx::Error> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let n = writes.len();
    let (mut session_ids, mut tenant_ids, mut call_sids, mut account_sids) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut phone_ids, mut agent_ids, mut froms, mut tos, mut directions) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut traces, mut modes) = (Vec::with_capacity(n), Vec::with_capacity(n));
    // The calls to admit: the group's inbound webhooks, each CallSid once.
    let (mut admit_sids, mut admit_tenants, mut admit_agents) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut event_ids, mut kinds, mut keys, mut payloads, mut times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for w in writes {
        let Some(seed) = &w.seed else { continue };
        session_ids.push(Uuid::now_v7());
        tenant_ids.push(seed.tenant_id);
        call_sids.push(w.call_sid.clone());
        account_sids.push(seed.account_sid.clone());
        phone_ids.push(seed.phone_number_id);
        agent_ids.push(seed.agent_id);
        froms.push(seed.from.clone());
        tos.push(seed.to.clone());
        directions.push(seed.direction.clone());
        event_ids.push(w.event_id);
        kinds.push(w.kind.to_owned());
        keys.push(w.idempotency_key.clone());
        payloads.push(w.payload.clone());
        times.push(w.occurred_at);
        traces.push(w.traceparent.clone());
        modes.push(seed.data_storage.as_str());
        if w.kind == event_type::CALL_INBOUND && !admit_sids.contains(&w.call_sid) {
            admit_sids.push(w.call_sid.clone());
            admit_tenants.push(seed.tenant_id);
            admit_agents.push(seed.agent_id);
        }
    }
    let rows: Vec<WriteRow> = sqlx::query_as(UPSERT_MANY)
        .bind(&session_ids)
        .bind(&tenant_ids)
        .bind(&call_sids)
        .bind(&account_sids)
        .bind(&phone_ids)
        .bind(&agent_ids)
        .bind(&froms)
        .bind(&tos)
        .bind(&directions)
        .bind(&event_ids)
        .bind(&kinds)
        .bind(&keys)
        .bind(&payloads)
        .bind(&times)
        .bind(&traces)
        .bind(&admit_sids)
        .bind(&admit_tenants)
        .bind(&admit_agents)
        .bind(&modes)
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() != writes.len() {
        return Err(sqlx::Error::Protocol(format!(
            "group upsert returned {} rows for {} webhooks",
            rows.len(),
            writes.len()
        )));
    }
    Ok(rows
        .into_iter()
        .zip(writes)
        .map(|(row, w)| row.stored(w))
        .collect())
}

/// A webhook's one statement, atomic on its own: no BEGIN and COMMIT round
/// trips around it (two of the three a lone webhook would otherwise wait
/// for).
async fn try_single(pool: &PgPool, write: &CallWrite) -> Result<Stored, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    write_one(&mut conn, write).await
}
