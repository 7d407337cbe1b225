//! `GET /internal/audit-log` (admin): who changed what in the tenant, newest
//! first.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::auth::AdminPrincipal;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::AppResult;
use crate::http::extract::{Json, Query};
use crate::http::pagination::{Cursor, Page, PageRequest};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_log))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AuditLogEntry {
    pub id: Uuid,
    pub tenant_id: Option<Uuid>,
    /// The token's `sub` (a user id or a service name), or a key label.
    pub actor: String,
    /// E.g. `agent_version.publish`.
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: Value,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditLogQuery {
    pub tenant_id: Uuid,
    /// Only entries with this action (e.g. `call.delete`).
    pub action: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/internal/audit-log", tag = "audit-log",
    security(("bearer" = [])),
    params(AuditLogQuery),
    responses(
        (status = 200, body = Page<AuditLogEntry>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, description = "not internal_admin, or another tenant", body = shared::error::ErrorBody),
    ))]
async fn list_audit_log(
    State(state): State<AppState>,
    AdminPrincipal(claims): AdminPrincipal,
    Query(query): Query<AuditLogQuery>,
) -> AppResult<Json<Page<AuditLogEntry>>> {
    claims.require_tenant(query.tenant_id)?;
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let rows: Vec<AuditLogEntry> = sqlx::query_as(
        "SELECT id, tenant_id, actor, action, target_type, target_id, details, created_at
         FROM audit_log
         WHERE tenant_id = $1
           AND ($2::text IS NULL OR action = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
         ORDER BY created_at DESC, id DESC
         LIMIT $5",
    )
    .bind(query.tenant_id)
    .bind(query.action.as_deref())
    .bind(page.cursor_at())
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(page.page(rows, |e| Cursor {
        at: e.created_at,
        id: e.id,
    })))
}
