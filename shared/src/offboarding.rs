//! Off-boarding: a tenant leaves with everything it has. The api starts it
//! (`DELETE /internal/tenants/{id}`: refused while a legal hold of the
//! tenant is active; in the same transaction its numbers stop routing and
//! the off-boarding is recorded) and runs [`run`] at once; the
//! dispatch-worker resumes any unfinished one on its retention schedule.
//! [`run`] deletes the tenant's calls in batches, recording progress after
//! each, then the tenant row (the rest cascades). See
//! docs/decisions/0051-tenant-offboarding.md.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::retention::{Pace, Purged, delete_calls};

/// An off-boarding's progress; it outlives its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Offboarding {
    pub tenant_id: Uuid,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// `in_progress` or `completed`.
    pub status: String,
    /// What has gone so far.
    #[sqlx(json)]
    pub deleted: Purged,
    /// Calls still to delete.
    pub remaining_calls: i64,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// The off-boarding of `tenant_id`, if one was started.
pub async fn progress(
    conn: &mut PgConnection,
    tenant_id: Uuid,
) -> Result<Option<Offboarding>, sqlx::Error> {
    sqlx::query_as(
        "SELECT o.tenant_id, o.requested_by, o.requested_at,
                CASE WHEN o.completed_at IS NULL THEN 'in_progress' ELSE 'completed' END AS status,
                o.deleted,
                (SELECT count(*) FROM call_sessions c WHERE c.tenant_id = o.tenant_id) AS remaining_calls,
                o.updated_at, o.completed_at
         FROM tenant_offboardings o WHERE o.tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_optional(conn)
    .await
}

/// The tenants whose off-boarding was started and has not finished.
pub async fn unfinished(pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT tenant_id FROM tenant_offboardings WHERE completed_at IS NULL ORDER BY requested_at",
    )
    .fetch_all(pool)
    .await
}

/// Deletes the off-boarded tenant's calls at `pace`, then the tenant. One
/// run per tenant at a time across the deployment (a session advisory
/// lock): `false` when another holds it, or there is nothing to do.
pub async fn run(pool: &PgPool, tenant_id: Uuid, pace: Pace) -> Result<bool, sqlx::Error> {
    const LOCK: &str =
        "SELECT pg_try_advisory_lock(hashtextextended('offboarding:' || $1::text, 0))";
    const UNLOCK: &str =
        "SELECT pg_advisory_unlock(hashtextextended('offboarding:' || $1::text, 0))";
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar(LOCK)
        .bind(tenant_id)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(false);
    }
    let outcome = run_locked(&mut conn, tenant_id, pace).await;
    let unlocked = sqlx::query_scalar::<_, bool>(UNLOCK)
        .bind(tenant_id)
        .fetch_one(&mut *conn)
        .await;
    if !matches!(unlocked, Ok(true)) {
        // Closing the connection releases the lock it may still hold.
        conn.close_on_drop();
    }
    outcome
}

async fn run_locked(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    pace: Pace,
) -> Result<bool, sqlx::Error> {
    let deleted: Option<sqlx::types::Json<Purged>> = sqlx::query_scalar(
        "SELECT deleted FROM tenant_offboardings WHERE tenant_id = $1 AND completed_at IS NULL",
    )
    .bind(tenant_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(sqlx::types::Json(mut deleted)) = deleted else {
        return Ok(false);
    };
    loop {
        let started = std::time::Instant::now();
        let mut tx = conn.begin().await?;
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM call_sessions WHERE tenant_id = $1 LIMIT $2")
                .bind(tenant_id)
                .bind(pace.batch)
                .fetch_all(&mut *tx)
                .await?;
        if ids.is_empty() {
            break;
        }
        deleted.absorb(delete_calls(&mut tx, tenant_id, &ids).await?);
        record_progress(&mut tx, tenant_id, deleted, false).await?;
        tx.commit().await?;
        pace.rest(started.elapsed()).await;
    }
    // The rest is small beside the calls: agents, numbers, tools, webhook
    // endpoints, holds, memberships, rollups cascade with the tenant; the
    // audit log keeps its entries without the tenant (and the next KPI
    // compaction drops its marks).
    let mut tx = conn.begin().await?;
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(tenant_id)
        .execute(&mut *tx)
        .await?;
    record_progress(&mut tx, tenant_id, deleted, true).await?;
    sqlx::query(
        "INSERT INTO audit_log (id, tenant_id, actor, action, target_type, target_id, details)
         VALUES ($1, NULL, 'offboarding', 'tenant.offboarded', 'tenant', $2::text, $3)",
    )
    .bind(Uuid::now_v7())
    .bind(tenant_id)
    .bind(serde_json::json!({ "deleted": deleted }))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

async fn record_progress(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    deleted: Purged,
    completed: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenant_offboardings
         SET deleted = $2, updated_at = now(),
             completed_at = CASE WHEN $3 THEN now() END
         WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .bind(sqlx::types::Json(deleted))
    .bind(completed)
    .execute(conn)
    .await?;
    Ok(())
}
