//! What happened: one execution by id, and a call's executions.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::auth::InternalPrincipal;
use shared::automation::ToolError;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{Cursor, Page, PageRequest};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub call_id: Uuid,
    pub tool_id: Uuid,
    pub tool_name: String,
    pub trace_id: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<ToolError>,
    pub http_status: Option<i32>,
    pub attempts: i32,
    pub latency_ms: Option<i32>,
    pub deadline_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
struct ExecutionRow {
    id: Uuid,
    tenant_id: Uuid,
    call_id: Uuid,
    tool_id: Uuid,
    tool_name: String,
    trace_id: String,
    status: String,
    input: Value,
    output: Option<Value>,
    error_code: Option<String>,
    error_message: Option<String>,
    http_status: Option<i32>,
    attempts: i32,
    latency_ms: Option<i32>,
    deadline_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<ExecutionRow> for ExecutionView {
    fn from(r: ExecutionRow) -> Self {
        Self {
            id: r.id,
            tenant_id: r.tenant_id,
            call_id: r.call_id,
            tool_id: r.tool_id,
            tool_name: r.tool_name,
            trace_id: r.trace_id,
            status: r.status,
            input: r.input,
            output: r.output,
            error: r.error_code.map(|code| ToolError {
                code,
                message: r.error_message.unwrap_or_default(),
            }),
            http_status: r.http_status,
            attempts: r.attempts,
            latency_ms: r.latency_ms,
            deadline_at: r.deadline_at,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// One tool execution.
#[utoipa::path(get, path = "/internal/automation/executions/{execution_id}", tag = "automation",
    params(("execution_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ExecutionView),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
pub async fn get_execution(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(execution_id): Path<Uuid>,
) -> AppResult<Json<ExecutionView>> {
    let row: Option<ExecutionRow> = sqlx::query_as(BY_ID)
        .bind(execution_id)
        .bind(claims.tenant_id)
        .fetch_optional(&state.pool)
        .await?;
    row.map(|r| Json(r.into()))
        .ok_or(AppError::NotFound("execution"))
}

const BY_ID: &str = "SELECT te.id, te.tenant_id, te.call_id, te.tool_id, t.name AS tool_name,
        te.trace_id, te.status, te.input, te.output, te.error_code, te.error_message,
        te.http_status, te.attempts, te.latency_ms, te.deadline_at, te.created_at,
        te.started_at, te.finished_at
     FROM tool_executions te JOIN tools t ON t.tenant_id = te.tenant_id AND t.id = te.tool_id
     WHERE te.id = $1 AND te.tenant_id = $2";

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1 to 200, default 50.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// A call's tool executions, oldest first.
#[utoipa::path(get, path = "/internal/calls/{call_id}/tool-executions", tag = "automation",
    params(("call_id" = Uuid, Path), ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<ExecutionView>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, description = "unknown call", body = shared::error::ErrorBody),
    ))]
pub async fn list_call_executions(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(call_id): Path<Uuid>,
    Query(query): Query<ListQuery>,
) -> AppResult<Json<Page<ExecutionView>>> {
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    super::find_call(&state.pool, claims.tenant_id, call_id).await?;
    let rows: Vec<ExecutionRow> = sqlx::query_as(
        "SELECT te.id, te.tenant_id, te.call_id, te.tool_id, t.name AS tool_name,
            te.trace_id, te.status, te.input, te.output, te.error_code, te.error_message,
            te.http_status, te.attempts, te.latency_ms, te.deadline_at, te.created_at,
            te.started_at, te.finished_at
         FROM tool_executions te JOIN tools t ON t.tenant_id = te.tenant_id AND t.id = te.tool_id
         WHERE te.call_id = $1 AND te.tenant_id = $2
           AND ($3::timestamptz IS NULL OR (te.created_at, te.id) > ($3, $4))
         ORDER BY te.created_at, te.id
         LIMIT $5",
    )
    .bind(call_id)
    .bind(claims.tenant_id)
    .bind(page.cursor_at())
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    let views: Vec<ExecutionView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(page.page(views, |v| Cursor {
        at: v.created_at,
        id: v.id,
    })))
}
