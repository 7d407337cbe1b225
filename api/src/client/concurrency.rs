//! `GET /client/concurrency` (and `GET /internal/tenants/{id}/concurrency`,
//! which reads the same figures): the tenant's concurrent-call limit, its
//! live calls now, the peak and the calls refused for capacity in the last
//! 24 hours, and the same per agent that has a limit or a live call.
//!
//! A call counts from its admission at ring time (`started_at`) until it is
//! released (`released_at`: it ended, its dispatch expired unclaimed, or it
//! outlived `MAX_CALL_DURATION`); see migration 0015. The peak replays those
//! intervals, so it is exact for any call the window saw.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::reads::ClientRead;
use crate::http::error::{AppError, AppResult};
use crate::http::extract::Json;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_concurrency))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Concurrency {
    pub tenant_id: Uuid,
    /// Most calls in progress at once; `null`: no limit.
    pub max_concurrent_calls: Option<i32>,
    /// Calls counting against the limit now.
    pub live_calls: i64,
    /// The most calls counted at once in the last 24 hours.
    pub peak_live_calls_24h: i64,
    /// Calls refused at ring time for capacity in the last 24 hours.
    pub rejected_for_capacity_24h: i64,
    /// Agents with a limit of their own or a live call.
    pub agents: Vec<AgentConcurrency>,
    pub measured_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct AgentConcurrency {
    pub agent_id: Uuid,
    pub max_concurrent_calls: Option<i32>,
    pub live_calls: i64,
}

#[derive(sqlx::FromRow)]
struct TenantRow {
    max_concurrent_calls: Option<i32>,
    live_calls: i64,
    peak_live_calls_24h: i64,
    rejected_for_capacity_24h: i64,
    measured_at: DateTime<Utc>,
}

/// `$1` tenant. Counted calls are read from the tenant's calls of the last
/// 48 hours (a call longer than a day is ended by Twilio) plus any older
/// call still live; each adds +1 at admission and -1 at release, and the
/// running sum's maximum within the window (or the level the window opened
/// at) is the peak. At one instant a release is replayed before an
/// admission, as admission saw it.
const TENANT_SQL: &str = "
WITH counted AS (
    SELECT started_at, released_at FROM call_sessions
    WHERE tenant_id = $1 AND started_at >= now() - interval '48 hours'
      AND (live OR released_at IS NOT NULL)
    UNION ALL
    SELECT started_at, released_at FROM call_sessions
    WHERE tenant_id = $1 AND live AND started_at < now() - interval '48 hours'
), steps AS (
    SELECT started_at AS at, 1 AS step FROM counted
    UNION ALL
    SELECT released_at, -1 FROM counted WHERE released_at IS NOT NULL
), levels AS (
    SELECT at, sum(step) OVER (ORDER BY at, step ROWS UNBOUNDED PRECEDING) AS level FROM steps
)
SELECT t.max_concurrent_calls,
       (SELECT count(*) FROM call_sessions WHERE tenant_id = $1 AND live) AS live_calls,
       GREATEST(
           (SELECT COALESCE(max(level), 0) FROM levels WHERE at >= now() - interval '24 hours'),
           (SELECT count(*) FROM counted
            WHERE started_at < now() - interval '24 hours'
              AND (released_at IS NULL OR released_at >= now() - interval '24 hours'))
       )::int8 AS peak_live_calls_24h,
       (SELECT count(*) FROM call_sessions
        WHERE tenant_id = $1 AND started_at >= now() - interval '24 hours'
          AND status = 'rejected') AS rejected_for_capacity_24h,
       now() AS measured_at
FROM tenants t WHERE t.id = $1";

const AGENTS_SQL: &str = "
SELECT a.id AS agent_id, a.max_concurrent_calls, count(s.id) AS live_calls
FROM agents a
LEFT JOIN call_sessions s ON s.tenant_id = a.tenant_id AND s.agent_id = a.id AND s.live
WHERE a.tenant_id = $1
GROUP BY a.id, a.max_concurrent_calls
HAVING a.max_concurrent_calls IS NOT NULL OR count(s.id) > 0
ORDER BY a.id";

/// The tenant's figures; 404 when the tenant does not exist.
pub async fn fetch(pool: &PgPool, tenant_id: Uuid) -> AppResult<Concurrency> {
    let mut tx = pool.begin().await?;
    // One snapshot for both reads.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let row: TenantRow = sqlx::query_as(TENANT_SQL)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AppError::NotFound("tenant"))?;
    let agents: Vec<AgentConcurrency> = sqlx::query_as(AGENTS_SQL)
        .bind(tenant_id)
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Concurrency {
        tenant_id,
        max_concurrent_calls: row.max_concurrent_calls,
        live_calls: row.live_calls,
        peak_live_calls_24h: row.peak_live_calls_24h,
        rejected_for_capacity_24h: row.rejected_for_capacity_24h,
        agents,
        measured_at: row.measured_at,
    })
}

/// The token's tenant's concurrent calls.
#[utoipa::path(get, path = "/client/concurrency", tag = "client",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Concurrency),
        (status = 401, body = shared::error::ErrorBody),
    ))]
async fn get_concurrency(
    ClientRead { claims, pool, .. }: ClientRead,
) -> AppResult<Json<Concurrency>> {
    Ok(Json(fetch(&pool, claims.tenant_id).await?))
}
