//! Retention: each tenant's calls older than its `retention_days` are
//! deleted with everything that hangs off them (events, runtime events and
//! transcript, recordings metadata, tool executions, the dispatch: the
//! foreign keys cascade), in small batches; a call under an active legal
//! hold, its own or its tenant's, is kept whatever its age, and purged by a
//! later run once the hold is released. The dispatch-worker runs
//! [`purge`] on a schedule; the api previews it ([`preview`]). See
//! docs/decisions/0049-retention-purge.md.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The calls of tenant `$1` that started before `$2` and that no active
/// hold covers: the one definition both the purge and its preview use.
const EXPIRED_UNHELD: &str = "FROM call_sessions c
WHERE c.tenant_id = $1 AND c.started_at < $2
  AND NOT EXISTS (SELECT 1 FROM legal_holds h
                  WHERE h.tenant_id = $1 AND h.released_at IS NULL
                    AND (h.call_id IS NULL OR h.call_id = c.id))";

/// What hangs off a set of calls (`$1`, an array of call ids), counted
/// before they go.
const DEPENDENTS_OF: &str = "SELECT
    (SELECT count(*) FROM call_events WHERE call_id = ANY($1)),
    (SELECT count(*) FROM transcript_segments WHERE call_id = ANY($1)),
    (SELECT count(*) FROM recordings WHERE call_id = ANY($1)),
    (SELECT count(*) FROM tool_executions WHERE call_id = ANY($1)),
    (SELECT count(*) FROM runtime_dispatches WHERE call_id = ANY($1))";

/// Rows a purge deleted, or a preview says it would.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(default)]
pub struct Purged {
    pub calls: i64,
    /// Call events, runtime events included.
    pub events: i64,
    pub transcript_segments: i64,
    pub recordings: i64,
    pub tool_executions: i64,
    pub runtime_dispatches: i64,
}

impl Purged {
    pub fn absorb(&mut self, other: Purged) {
        self.calls += other.calls;
        self.events += other.events;
        self.transcript_segments += other.transcript_segments;
        self.recordings += other.recordings;
        self.tool_executions += other.tool_executions;
        self.runtime_dispatches += other.runtime_dispatches;
    }

    fn add(&mut self, calls: i64, dependents: (i64, i64, i64, i64, i64)) {
        self.calls += calls;
        self.events += dependents.0;
        self.transcript_segments += dependents.1;
        self.recordings += dependents.2;
        self.tool_executions += dependents.3;
        self.runtime_dispatches += dependents.4;
    }
}

/// How hard a purge (or an off-boarding) presses on the database: `batch`
/// calls per transaction, and after each batch a rest long enough that
/// batches fill at most `duty` of the time. Small, spaced batches keep
/// the inbound path's latency: a batch in flight competes with it for the
/// CPU and the WAL, and p99 sees any share of the time it runs at full
/// speed (docs/benchmarks.md, "Retention purge").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub batch: i64,
    /// In (0, 1]; 1 never rests.
    pub duty: f64,
}

impl Pace {
    /// The worker's defaults (`RETENTION_PURGE_BATCH`, `RETENTION_PURGE_DUTY`).
    pub const DEFAULT: Pace = Pace {
        batch: 50,
        duty: 0.2,
    };

    /// `batch` calls per transaction, back to back (tests, a maintenance
    /// window).
    pub fn unpaced(batch: i64) -> Self {
        Pace { batch, duty: 1.0 }
    }

    /// Rests after a batch that took `took`.
    pub async fn rest(&self, took: std::time::Duration) {
        if self.duty < 1.0 && self.duty > 0.0 {
            tokio::time::sleep(took.mul_f64((1.0 - self.duty) / self.duty)).await;
        }
    }
}

/// The instant before which a tenant keeping `retention_days` days of calls
/// lets them go.
pub fn cutoff(now: DateTime<Utc>, retention_days: i32) -> DateTime<Utc> {
    now - Duration::days(i64::from(retention_days))
}

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PurgeRun {
    /// Another instance held the run: this one did nothing.
    pub skipped: bool,
    /// Per tenant that lost calls.
    pub tenants: Vec<(Uuid, Purged)>,
}

/// Purges every tenant with a retention, at `pace`. One run at a time
/// across the deployment (a session advisory lock); each tenant that lost
/// calls gets one audit entry with the counts.
pub async fn purge(pool: &PgPool, pace: Pace) -> Result<PurgeRun, sqlx::Error> {
    const LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('retention_purge'), 0)";
    const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('retention_purge'), 0)";
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar(LOCK).fetch_one(&mut *conn).await?;
    if !locked {
        return Ok(PurgeRun {
            skipped: true,
            tenants: Vec::new(),
        });
    }
    let outcome = purge_locked(&mut conn, pace).await;
    let unlocked = sqlx::query_scalar::<_, bool>(UNLOCK)
        .fetch_one(&mut *conn)
        .await;
    if !matches!(unlocked, Ok(true)) {
        // Closing the connection releases the lock it may still hold.
        conn.close_on_drop();
    }
    outcome
}

async fn purge_locked(conn: &mut PgConnection, pace: Pace) -> Result<PurgeRun, sqlx::Error> {
    let tenants: Vec<(Uuid, i32)> = sqlx::query_as(
        // A tenant being off-boarded goes whole (`offboarding`).
        "SELECT id, retention_days FROM tenants
         WHERE retention_days IS NOT NULL AND offboarding_at IS NULL ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut run = PurgeRun::default();
    for (tenant_id, retention_days) in tenants {
        // One cutoff for the whole tenant's run, so its batches and its
        // audit entry agree.
        let cutoff = cutoff(Utc::now(), retention_days);
        let mut purged = Purged::default();
        loop {
            let started = std::time::Instant::now();
            let calls = purge_batch(conn, tenant_id, cutoff, pace.batch, &mut purged).await?;
            if calls < pace.batch {
                break;
            }
            pace.rest(started.elapsed()).await;
        }
        if purged.calls > 0 {
            sqlx::query(
                "INSERT INTO audit_log (id, tenant_id, actor, action, target_type, target_id, details)
                 VALUES ($1, $2, 'dispatch-worker', 'retention.purge', 'tenant', $2::text, $3)",
            )
            .bind(Uuid::now_v7())
            .bind(tenant_id)
            .bind(serde_json::json!({
                "retention_days": retention_days,
                "cutoff": cutoff,
                "purged": purged,
            }))
            .execute(&mut *conn)
            .await?;
            run.tenants.push((tenant_id, purged));
        }
    }
    Ok(run)
}

/// Deletes up to `batch` of the tenant's expired, unheld calls in one
/// transaction; the number deleted.
async fn purge_batch(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    cutoff: DateTime<Utc>,
    batch: i64,
    purged: &mut Purged,
) -> Result<i64, sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    // The lock a hold's placement takes exclusively: a hold placed now
    // waits for this batch, and this batch sees every hold placed before.
    sqlx::query(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended('legal_hold:' || $1::text, 0))",
    )
    .bind(tenant_id)
    .execute(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT c.id {EXPIRED_UNHELD} ORDER BY c.started_at LIMIT $3 FOR UPDATE SKIP LOCKED"
    )))
    .bind(tenant_id)
    .bind(cutoff)
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    let batch_purged = delete_calls(&mut tx, tenant_id, &ids).await?;
    tx.commit().await?;
    purged.absorb(batch_purged);
    Ok(batch_purged.calls)
}

/// Deletes the tenant's calls `ids` with everything that hangs off them
/// (the foreign keys cascade) and their event webhook messages, counting
/// what goes. The caller holds the
/// tenant's hold lock and has left out the held calls.
pub async fn delete_calls(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    ids: &[Uuid],
) -> Result<Purged, sqlx::Error> {
    let dependents: (i64, i64, i64, i64, i64) = sqlx::query_as(DEPENDENTS_OF)
        .bind(ids)
        .fetch_one(&mut *conn)
        .await?;
    // The calls' event webhook messages hold their numbers: they go too
    // (with their deliveries and attempts).
    let call_ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    sqlx::query(
        "DELETE FROM webhook_messages
         WHERE tenant_id = $1 AND data ? 'call_id' AND data->>'call_id' = ANY($2)",
    )
    .bind(tenant_id)
    .bind(&call_ids)
    .execute(&mut *conn)
    .await?;
    let calls = sqlx::query("DELETE FROM call_sessions WHERE id = ANY($1) AND tenant_id = $2")
        .bind(ids)
        .bind(tenant_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let mut purged = Purged::default();
    purged.add(i64::try_from(calls).unwrap_or(i64::MAX), dependents);
    Ok(purged)
}

/// What the next run would purge of a tenant, and what it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RetentionPreview {
    pub tenant_id: Uuid,
    /// `null`: the tenant keeps its calls for ever.
    pub retention_days: Option<i32>,
    /// Calls that started before this go (unless held).
    pub cutoff: Option<DateTime<Utc>>,
    pub would_purge: Purged,
    /// Calls past the cutoff kept because a legal hold covers them.
    pub held_calls: i64,
    /// The start of the oldest call kept.
    pub oldest_kept: Option<DateTime<Utc>>,
}

/// The preview of the tenant's next purge, as of now.
pub async fn preview(
    pool: &PgPool,
    tenant_id: Uuid,
    retention_days: Option<i32>,
) -> Result<RetentionPreview, sqlx::Error> {
    let Some(days) = retention_days else {
        let oldest_kept: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT min(started_at) FROM call_sessions WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_one(pool)
                .await?;
        return Ok(RetentionPreview {
            tenant_id,
            retention_days: None,
            cutoff: None,
            would_purge: Purged::default(),
            held_calls: 0,
            oldest_kept,
        });
    };
    let cutoff = cutoff(Utc::now(), days);
    // Counted in Postgres (a tenant may have millions of expired calls),
    // in one snapshot.
    let (calls, events, segments, recordings, executions, dispatches, expired, oldest_kept): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<DateTime<Utc>>,
    ) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH x AS MATERIALIZED (SELECT c.id {EXPIRED_UNHELD})
         SELECT (SELECT count(*) FROM x),
                (SELECT count(*) FROM x JOIN call_events e ON e.call_id = x.id),
                (SELECT count(*) FROM x JOIN transcript_segments t ON t.call_id = x.id),
                (SELECT count(*) FROM x JOIN recordings r ON r.call_id = x.id),
                (SELECT count(*) FROM x JOIN tool_executions te ON te.call_id = x.id),
                (SELECT count(*) FROM x JOIN runtime_dispatches d ON d.call_id = x.id),
                (SELECT count(*) FROM call_sessions WHERE tenant_id = $1 AND started_at < $2),
                (SELECT min(c.started_at) FROM call_sessions c
                 WHERE c.tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM x WHERE x.id = c.id))"
    )))
    .bind(tenant_id)
    .bind(cutoff)
    .fetch_one(pool)
    .await?;
    let would_purge = Purged {
        calls,
        events,
        transcript_segments: segments,
        recordings,
        tool_executions: executions,
        runtime_dispatches: dispatches,
    };
    Ok(RetentionPreview {
        tenant_id,
        retention_days: Some(days),
        cutoff: Some(cutoff),
        would_purge,
        held_calls: expired - calls,
        oldest_kept,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Pace;

    #[tokio::test]
    async fn a_pace_rests_in_proportion_to_the_batch() {
        // A fifth of the time: a 10 ms batch is followed by 40 ms of rest.
        let started = Instant::now();
        Pace::DEFAULT.rest(Duration::from_millis(10)).await;
        assert!(started.elapsed() >= Duration::from_millis(39));
        let started = Instant::now();
        Pace::unpaced(500).rest(Duration::from_secs(60)).await;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "unpaced never rests"
        );
    }
}
