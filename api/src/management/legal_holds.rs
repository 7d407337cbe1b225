//! `/internal/legal-holds`: holds on one call or on a whole tenant. A held
//! call is never deleted or purged; placing and releasing a hold needs
//! `internal_admin`.
//!
//! Placing a hold and deleting a call are serialised per tenant by an
//! advisory lock (exclusive to place, shared to delete), so a call cannot be
//! deleted "around" a hold placed at the same moment.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::auth::{AdminPrincipal, InternalPrincipal};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{Cursor, Page, PageRequest};
use crate::management::{audit, text_field};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_legal_hold, list_legal_holds))
        .routes(routes!(release_legal_hold))
}

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct LegalHold {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The held call; `null` holds every call of the tenant.
    pub call_id: Option<Uuid>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub released_by: Option<String>,
    /// Not released yet.
    pub active: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLegalHold {
    pub tenant_id: Uuid,
    /// A call of the tenant; absent holds the whole tenant.
    pub call_id: Option<Uuid>,
    /// 1 to 2000 characters.
    #[schema(min_length = 1, max_length = 2000)]
    pub reason: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LegalHoldListQuery {
    pub tenant_id: Uuid,
    /// Only active (`true`) or only released (`false`) holds; both when absent.
    pub active: Option<bool>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LegalHoldPath {
    pub hold_id: Uuid,
}

const HOLD_COLUMNS: &str = "id, tenant_id, call_id, reason, created_by, created_at, released_at, released_by, released_at IS NULL AS active";

/// Takes the tenant's hold lock for the transaction: `exclusive` to place a
/// hold, shared to delete calls.
pub async fn lock_tenant_holds(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    exclusive: bool,
) -> Result<(), sqlx::Error> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock(hashtextextended('legal_hold:' || $1::text, 0))"
    } else {
        "SELECT pg_advisory_xact_lock_shared(hashtextextended('legal_hold:' || $1::text, 0))"
    };
    sqlx::query(sql).bind(tenant_id).execute(conn).await?;
    Ok(())
}

/// The oldest active hold covering the call (its own or the tenant's).
pub async fn active_hold_for_call(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    call_id: Uuid,
) -> Result<Option<LegalHold>, sqlx::Error> {
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM legal_holds
         WHERE tenant_id = $1 AND released_at IS NULL AND (call_id IS NULL OR call_id = $2)
         ORDER BY created_at, id LIMIT 1"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(call_id)
        .fetch_optional(conn)
        .await
}

/// Places a hold on a call of the tenant, or on the whole tenant.
#[utoipa::path(post, path = "/internal/legal-holds", tag = "legal-holds",
    security(("bearer" = [])),
    request_body = CreateLegalHold,
    responses(
        (status = 201, body = LegalHold),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, description = "not internal_admin, or another tenant", body = shared::error::ErrorBody),
        (status = 404, description = "call_id is not a call of the tenant", body = shared::error::ErrorBody),
        (status = 409, description = "the tenant is being off-boarded", body = shared::error::ErrorBody),
    ))]
async fn create_legal_hold(
    State(state): State<AppState>,
    AdminPrincipal(claims): AdminPrincipal,
    Json(body): Json<CreateLegalHold>,
) -> AppResult<(StatusCode, Json<LegalHold>)> {
    claims.require_tenant(body.tenant_id)?;
    let reason = text_field("reason", &body.reason, 1, 2000)?;
    let mut tx = state.pool.begin().await?;
    lock_tenant_holds(&mut tx, body.tenant_id, true).await?;
    let offboarding: bool =
        sqlx::query_scalar("SELECT offboarding_at IS NOT NULL FROM tenants WHERE id = $1")
            .bind(body.tenant_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(AppError::NotFound("tenant"))?;
    if offboarding {
        return Err(AppError::Conflict(
            "the tenant is being off-boarded: its data is being deleted".into(),
        ));
    }
    if let Some(call_id) = body.call_id {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM call_sessions WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2)",
        )
        .bind(call_id)
        .bind(body.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        if !exists {
            return Err(AppError::NotFound("call"));
        }
    }
    let sql = format!(
        "INSERT INTO legal_holds (id, tenant_id, call_id, reason, created_by)
         VALUES ($1, $2, $3, $4, $5) RETURNING {HOLD_COLUMNS}"
    );
    let hold: LegalHold = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(Uuid::now_v7())
        .bind(body.tenant_id)
        .bind(body.call_id)
        .bind(&reason)
        .bind(&claims.sub)
        .fetch_one(&mut *tx)
        .await?;
    audit(
        &mut tx,
        &claims,
        hold.tenant_id,
        "legal_hold.create",
        "legal_hold",
        hold.id,
        json!({"call_id": hold.call_id, "reason": hold.reason}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(hold)))
}

/// The tenant's holds, newest first.
#[utoipa::path(get, path = "/internal/legal-holds", tag = "legal-holds",
    security(("bearer" = [])),
    params(LegalHoldListQuery),
    responses(
        (status = 200, body = Page<LegalHold>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
    ))]
async fn list_legal_holds(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Query(query): Query<LegalHoldListQuery>,
) -> AppResult<Json<Page<LegalHold>>> {
    claims.require_tenant(query.tenant_id)?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM legal_holds
         WHERE tenant_id = $1
           AND ($2::boolean IS NULL OR (released_at IS NULL) = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
         ORDER BY created_at DESC, id DESC
         LIMIT $5"
    );
    let rows: Vec<LegalHold> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.tenant_id)
        .bind(query.active)
        .bind(page.cursor_at())
        .bind(page.cursor_id())
        .bind(page.fetch())
        .fetch_all(&state.pool)
        .await?;
    Ok(Json(page.page(rows, |h| Cursor {
        at: h.created_at,
        id: h.id,
    })))
}

/// Releases an active hold; releasing it again answers 409.
#[utoipa::path(post, path = "/internal/legal-holds/{hold_id}/release", tag = "legal-holds",
    security(("bearer" = [])),
    params(LegalHoldPath),
    responses(
        (status = 200, body = LegalHold),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 409, description = "already released", body = shared::error::ErrorBody),
    ))]
async fn release_legal_hold(
    State(state): State<AppState>,
    AdminPrincipal(claims): AdminPrincipal,
    Path(path): Path<LegalHoldPath>,
) -> AppResult<Json<LegalHold>> {
    let mut tx = state.pool.begin().await?;
    let released_at: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "SELECT released_at FROM legal_holds WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
    )
    .bind(path.hold_id)
    .bind(claims.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    match released_at {
        None => return Err(AppError::NotFound("legal hold")),
        Some(Some(at)) => {
            return Err(AppError::Conflict(format!(
                "the legal hold was already released at {}",
                at.to_rfc3339()
            )));
        }
        Some(None) => {}
    }
    let sql = format!(
        "UPDATE legal_holds SET released_at = now(), released_by = $2
         WHERE id = $1 AND tenant_id = $3
         RETURNING {HOLD_COLUMNS}"
    );
    let hold: LegalHold = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(path.hold_id)
        .bind(&claims.sub)
        .bind(claims.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
    audit(
        &mut tx,
        &claims,
        hold.tenant_id,
        "legal_hold.release",
        "legal_hold",
        hold.id,
        json!({"call_id": hold.call_id}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(hold))
}
