//! `POST /internal/automation/tools/{tool_id}/execute` and
//! `POST /internal/automation/tools/by-name/{tool_name}/execute`.
//!
//! Checks, in this order: the call (404), the tool (404), the allowlist
//! when required (403), the input against the tool's JSON Schema (400 with
//! every violation), the tool's endpoint (422), the per-call rate (429).
//! The rate check and the insert of the queued execution share one
//! transaction holding the call's row lock, so concurrent requests for one
//! call are counted one after the other: never more than the limit.
//! Then automation-worker runs it over NATS request/reply.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::auth::{Claims, InternalPrincipal};
use shared::automation::{
    ExecutionStatus, ToolError, ToolExecuteReply, ToolExecuteRequest, error_codes,
};
use shared::trace::TraceContext;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::schema_cache::{self, Violation};
use crate::error::{AppError, AppResult};
use crate::extract::{Json, Path};
use crate::state::AppState;

/// Extra time the api waits past the execution's deadline for the worker's
/// reply (the worker stops its attempts a little before the deadline).
const REPLY_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteTool {
    pub call_id: Uuid,
    /// The tool's input; must match its `input_schema`.
    pub input_json: Value,
    /// Correlates logs and timeline events; when absent, the trace id of
    /// the request's `traceparent` header, or a new one.
    pub trace_id: Option<String>,
}

/// The outcome of an execution (200, and with `error` on 502/503/504).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecutionResult {
    pub execution_id: Uuid,
    pub trace_id: String,
    pub status: ExecutionStatus,
    pub output: Option<Value>,
    pub attempts: u32,
    pub latency_ms: Option<u64>,
    /// n8n's last HTTP status, when it answered.
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ToolError>,
}

/// 400 body for schema violations.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidInputBody {
    pub error: InvalidInputDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidInputDetail {
    /// `invalid_input`.
    pub code: String,
    pub message: String,
    /// Present when `code` is `invalid_input`; other 400s (a malformed
    /// body) carry only `code` and `message`.
    #[schema(required = false)]
    pub violations: Vec<Violation>,
}

#[derive(Debug, sqlx::FromRow)]
struct ToolRow {
    id: Uuid,
    name: String,
    input_schema: Value,
}

#[derive(Debug, Clone, Copy)]
enum ToolRef<'a> {
    Id(Uuid),
    Name(&'a str),
}

/// Runs a tool by id for a call, through automation-worker.
#[utoipa::path(post, path = "/internal/automation/tools/{tool_id}/execute", tag = "automation",
    params(("tool_id" = Uuid, Path)),
    request_body = ExecuteTool,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the tool succeeded", body = ExecutionResult),
        (status = 400, description = "input_json violates the tool's schema", body = InvalidInputBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, description = "not an internal token, or the tool is not on the agent version's allowlist", body = shared::error::ErrorBody),
        (status = 404, description = "unknown call or tool", body = shared::error::ErrorBody),
        (status = 422, description = "the tool has no endpoint or its integration is disabled", body = shared::error::ErrorBody),
        (status = 429, description = "too many executions for this call in the last 60 s (Retry-After)", body = shared::error::ErrorBody),
        (status = 502, description = "the tool failed after its attempts", body = ExecutionResult),
        (status = 503, description = "no automation-worker; recorded as failed", body = ExecutionResult),
        (status = 504, description = "the worker missed the deadline; the execution still ends recorded", body = ExecutionResult),
    ))]
pub async fn execute_tool_by_id(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    headers: HeaderMap,
    Path(tool_id): Path<Uuid>,
    Json(body): Json<ExecuteTool>,
) -> AppResult<Response> {
    execute(&state, &claims, &headers, ToolRef::Id(tool_id), body).await
}

/// Runs a tool by name for a call, through automation-worker.
#[utoipa::path(post, path = "/internal/automation/tools/by-name/{tool_name}/execute", tag = "automation",
    params(("tool_name" = String, Path)),
    request_body = ExecuteTool,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the tool succeeded", body = ExecutionResult),
        (status = 400, description = "input_json violates the tool's schema", body = InvalidInputBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 422, body = shared::error::ErrorBody),
        (status = 429, body = shared::error::ErrorBody),
        (status = 502, body = ExecutionResult),
        (status = 503, body = ExecutionResult),
        (status = 504, body = ExecutionResult),
    ))]
pub async fn execute_tool_by_name(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    headers: HeaderMap,
    Path(tool_name): Path<String>,
    Json(body): Json<ExecuteTool>,
) -> AppResult<Response> {
    execute(&state, &claims, &headers, ToolRef::Name(&tool_name), body).await
}

fn trace_id(given: Option<String>, trace: &TraceContext) -> AppResult<String> {
    match given {
        None => Ok(trace.trace_id_hex()),
        Some(t) if !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(t)
        }
        Some(_) => Err(AppError::bad_request(
            "trace_id: 1 to 128 printable ASCII characters without spaces",
        )),
    }
}

async fn execute(
    state: &AppState,
    claims: &Claims,
    http_headers: &HeaderMap,
    tool_ref: ToolRef<'_>,
    body: ExecuteTool,
) -> AppResult<Response> {
    let settings = &state.settings.automation;
    let tenant_id = claims.tenant_id;
    // The caller's trace continued (or a new one); it travels to the
    // worker in the NATS headers so both services' logs join up.
    let trace = TraceContext::from_http(http_headers);
    let trace_id = trace_id(body.trace_id, &trace)?;

    // One round trip reads what every check needs; the checks still
    // answer in the documented order.
    let found: Option<Lookup> = match tool_ref {
        ToolRef::Id(id) => {
            sqlx::query_as(LOOKUP_BY_ID)
                .bind(body.call_id)
                .bind(tenant_id)
                .bind(id)
                .fetch_optional(&state.pool)
                .await?
        }
        ToolRef::Name(name) => {
            sqlx::query_as(LOOKUP_BY_NAME)
                .bind(body.call_id)
                .bind(tenant_id)
                .bind(name)
                .fetch_optional(&state.pool)
                .await?
        }
    };
    // 1. The call (404, another tenant's exactly like a missing one).
    let Some(found) = found else {
        return Err(AppError::NotFound("call"));
    };
    let call = super::CallRef {
        id: found.call_id,
        tenant_id: found.tenant_id,
        agent_version_id: found.agent_version_id,
    };
    // 2. The tool (404).
    let (Some(tool_id), Some(tool_name), Some(input_schema)) =
        (found.tool_id, found.tool_name, found.input_schema)
    else {
        return Err(AppError::NotFound("tool"));
    };
    let tool = ToolRow {
        id: tool_id,
        name: tool_name,
        input_schema,
    };
    // 3. The allowlist (403).
    if settings.require_agent_tool_mapping && !found.allowed {
        return Err(AppError::Status {
            status: StatusCode::FORBIDDEN,
            code: "tool_not_allowed",
            message: format!(
                "tool {} is not on the allowlist of the call's agent version \
                 (AUTOMATION_REQUIRE_AGENT_TOOL_MAPPING=true)",
                tool.name
            ),
        });
    }
    // 4. The input against the tool's schema (400 with every violation).
    let validator =
        schema_cache::validator(tool.id, &tool.input_schema).map_err(|e| AppError::Status {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "tool_schema_invalid",
            message: format!("the tool's input_schema does not compile: {e}"),
        })?;
    let violations = schema_cache::violations(&validator, &body.input_json);
    if !violations.is_empty() {
        let body = InvalidInputBody {
            error: InvalidInputDetail {
                code: "invalid_input".into(),
                message: format!(
                    "input_json does not match the schema of tool {} ({} violation{})",
                    tool.name,
                    violations.len(),
                    if violations.len() == 1 { "" } else { "s" }
                ),
                violations,
            },
        };
        return Ok((StatusCode::BAD_REQUEST, axum::Json(body)).into_response());
    }
    // 5. Something to call.
    match found.integration_status.as_deref() {
        Some("active") => {}
        Some(_) => {
            return Err(AppError::Status {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "integration_disabled",
                message: format!("the n8n integration of tool {} is disabled", tool.name),
            });
        }
        None => {
            return Err(AppError::Status {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "tool_endpoint_missing",
                message: format!("tool {} has no endpoint to call", tool.name),
            });
        }
    }
    // 6. The rate (429) and the queued record, atomically.
    let execution_id = Uuid::now_v7();
    record_queued(
        state,
        &call,
        &tool,
        &body.input_json,
        &trace_id,
        execution_id,
    )
    .await?;

    // 7. Run it.
    let request = ToolExecuteRequest {
        execution_id,
        tenant_id,
    };
    let payload = serde_json::to_vec(&request).map_err(anyhow::Error::from)?;
    let sent = state
        .nats
        .send_request(
            state.subjects.automation_tool_execute(),
            async_nats::Request::new()
                .headers(nats_headers(
                    &execution_id.to_string(),
                    Some(&trace_id),
                    &trace,
                ))
                .payload(payload.into())
                .timeout(Some(settings.execute_timeout + REPLY_GRACE)),
        )
        .await;
    match sent {
        Ok(msg) => {
            let reply: ToolExecuteReply =
                serde_json::from_slice(&msg.payload).map_err(anyhow::Error::from)?;
            let status = if reply.status == ExecutionStatus::Succeeded {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            let result = ExecutionResult {
                execution_id,
                trace_id,
                status: reply.status,
                output: reply.output,
                attempts: reply.attempts,
                latency_ms: reply.latency_ms,
                http_status: reply.http_status,
                error: reply.error,
            };
            Ok((status, Json(result)).into_response())
        }
        Err(err) if err.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            let error = ToolError {
                code: error_codes::WORKER_UNAVAILABLE.into(),
                message: "no automation-worker is running; try again shortly".into(),
            };
            fail_unsent(&state.pool, &call, &tool, execution_id, &trace_id, &error).await?;
            let result = ExecutionResult {
                execution_id,
                trace_id,
                status: ExecutionStatus::Failed,
                output: None,
                attempts: 0,
                latency_ms: None,
                http_status: None,
                error: Some(error),
            };
            Ok((StatusCode::SERVICE_UNAVAILABLE, Json(result)).into_response())
        }
        Err(err) => {
            // Timed out (or NATS hiccup): the worker may still be running
            // it and will record its outcome, or the reaper will close it.
            tracing::warn!(%execution_id, %trace_id, w3c_trace_id = %trace.trace_id_hex(), error = %err, "tool execution: no reply in time");
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM tool_executions WHERE id = $1 AND tenant_id = $2",
            )
            .bind(execution_id)
            .bind(tenant_id)
            .fetch_optional(&state.pool)
            .await?;
            let result = ExecutionResult {
                execution_id,
                trace_id,
                status: status
                    .as_deref()
                    .and_then(ExecutionStatus::parse)
                    .unwrap_or(ExecutionStatus::Queued),
                output: None,
                attempts: 0,
                latency_ms: None,
                http_status: None,
                error: Some(ToolError {
                    code: "worker_timeout".into(),
                    message: format!(
                        "automation-worker did not answer in time; see GET /internal/automation/executions/{execution_id}"
                    ),
                }),
            };
            Ok((StatusCode::GATEWAY_TIMEOUT, Json(result)).into_response())
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Lookup {
    call_id: Uuid,
    tenant_id: Uuid,
    agent_version_id: Option<Uuid>,
    tool_id: Option<Uuid>,
    tool_name: Option<String>,
    input_schema: Option<Value>,
    allowed: bool,
    integration_status: Option<String>,
}

const LOOKUP_BY_ID: &str = "
SELECT c.id AS call_id, c.tenant_id, c.agent_version_id,
       t.id AS tool_id, t.name AS tool_name, t.input_schema,
       EXISTS (SELECT 1 FROM agent_version_tools avt
               WHERE avt.tenant_id = c.tenant_id AND avt.agent_version_id = c.agent_version_id
                 AND avt.tool_id = t.id) AS allowed,
       (SELECT i.status FROM tool_endpoints e
        JOIN integrations i ON i.tenant_id = e.tenant_id AND i.id = e.integration_id
        WHERE e.tenant_id = c.tenant_id AND e.tool_id = t.id) AS integration_status
FROM call_sessions c
LEFT JOIN tools t ON t.tenant_id = c.tenant_id AND t.id = $3
WHERE c.id = $1 AND c.tenant_id = $2";

const LOOKUP_BY_NAME: &str = "
SELECT c.id AS call_id, c.tenant_id, c.agent_version_id,
       t.id AS tool_id, t.name AS tool_name, t.input_schema,
       EXISTS (SELECT 1 FROM agent_version_tools avt
               WHERE avt.tenant_id = c.tenant_id AND avt.agent_version_id = c.agent_version_id
                 AND avt.tool_id = t.id) AS allowed,
       (SELECT i.status FROM tool_endpoints e
        JOIN integrations i ON i.tenant_id = e.tenant_id AND i.id = e.integration_id
        WHERE e.tenant_id = c.tenant_id AND e.tool_id = t.id) AS integration_status
FROM call_sessions c
LEFT JOIN tools t ON t.tenant_id = c.tenant_id AND t.name = $3
WHERE c.id = $1 AND c.tenant_id = $2";

/// The rate check and the queued execution with its `tool.requested`
/// event, atomically, in one round trip (`enqueue_tool_execution`,
/// migration 0004: the call's row lock, then count and insert).
async fn record_queued(
    state: &AppState,
    call: &super::CallRef,
    tool: &ToolRow,
    input: &Value,
    trace_id: &str,
    execution_id: Uuid,
) -> AppResult<()> {
    let settings = &state.settings.automation;
    let deadline_ms = settings.execute_timeout.as_secs_f64() * 1000.0;
    let retry_after: Option<f64> = sqlx::query_scalar(
        "SELECT enqueue_tool_execution($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(execution_id)
    .bind(call.tenant_id)
    .bind(call.id)
    .bind(tool.id)
    .bind(trace_id)
    .bind(input)
    .bind(deadline_ms)
    .bind(i64::from(settings.max_executions_per_minute))
    .bind(Uuid::now_v7())
    .bind(json!({"execution_id": execution_id, "tool_id": tool.id, "tool": tool.name}))
    .bind(if settings.synchronous_commit {
        "on"
    } else {
        "off"
    })
    .fetch_one(&state.pool)
    .await?;
    if let Some(retry_after) = retry_after {
        return Err(AppError::TooManyRequests {
            message: format!(
                "at most {} tool executions per call per minute (AUTOMATION_MAX_EXECUTIONS_PER_MINUTE)",
                settings.max_executions_per_minute
            ),
            retry_after_secs: retry_after.ceil().max(1.0) as u64,
        });
    }
    Ok(())
}

async fn insert_event(
    conn: &mut sqlx::PgConnection,
    call: &super::CallRef,
    event_type: &str,
    idempotency_key: &str,
    payload: Value,
    trace_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, trace_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (call_id, idempotency_key) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(call.tenant_id)
    .bind(call.id)
    .bind(event_type)
    .bind(idempotency_key)
    .bind(payload)
    .bind(trace_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// No worker took the request: the execution fails at once, recorded with
/// its `tool.failed` event, so it never waits for the reaper.
async fn fail_unsent(
    pool: &PgPool,
    call: &super::CallRef,
    tool: &ToolRow,
    execution_id: Uuid,
    trace_id: &str,
    error: &ToolError,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query(
        "UPDATE tool_executions
         SET status = 'failed', error_code = $2, error_message = $3, finished_at = now()
         WHERE id = $1 AND tenant_id = $4 AND status = 'queued'",
    )
    .bind(execution_id)
    .bind(&error.code)
    .bind(&error.message)
    .bind(call.tenant_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated > 0 {
        insert_event(
            &mut tx,
            call,
            "tool.failed",
            &format!("tool:{execution_id}:failed"),
            json!({"execution_id": execution_id, "tool_id": tool.id, "tool": tool.name,
                   "status": "failed", "attempts": 0, "error": error}),
            trace_id,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `Nats-Msg-Id` (the execution or integration id), the trace id and the
/// W3C `traceparent`, as every message of this system carries.
pub(crate) fn nats_headers(
    msg_id: &str,
    trace_id: Option<&str>,
    trace: &TraceContext,
) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    trace.inject(&mut headers);
    if let Some(trace_id) = trace_id {
        headers.insert("x-trace-id", trace_id);
    }
    headers
}
