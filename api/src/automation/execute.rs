//! `POST /internal/automation/tools/{tool_id}/execute` and
//! `POST /internal/automation/tools/by-name/{tool_name}/execute`.
//!
//! Checks, in this order: the call (404), the tool (404), the allowlist
//! when required (403), the input against the tool's JSON Schema (400 with
//! every violation), the tool's endpoint (422), the per-call rate (429).
//! All of them, and the queued execution, are one SQL call
//! (`execute_tool_checked`, migration 0014) with the tool's schema cached
//! here; the rate check and the insert hold a per-call advisory lock, so
//! concurrent requests for one call are counted one after the other: never
//! more than the limit. Then automation-worker runs it over NATS
//! request/reply, from the execution context that call returned.
//!
//! Three steps: [`check_and_enqueue`] (the SQL call, typed as [`Checked`]),
//! [`request`] (NATS, typed as [`Sent`]) and [`answer`] (HTTP, closing the
//! execution when it was never sent); [`refusal`] answers what the checks
//! refused.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::auth::{Claims, RuntimePrincipal};
use shared::automation::{
    ExecutionContext, ExecutionStatus, REQUEST_SIGNATURE_HEADER, RequestKind, ToolError,
    ToolExecuteReply, ToolExecuteRequest, error_codes,
};
use shared::redaction::DataStorage;
use shared::tool_executions::{self, OpenExecution};
use shared::trace::TraceContext;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::schema_cache::{self, CachedTool, ToolKey, Violation};
use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path};
use crate::http::size_caps;
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

/// The api answers with the worker's reply shape itself.
pub use shared::automation::ToolExecuteReply as ExecutionResult;

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
        (status = 413, description = "input_json over MAX_TOOL_INPUT_BYTES or too large for one NATS message", body = shared::error::ErrorBody),
        (status = 422, description = "the tool has no endpoint or its integration is disabled", body = shared::error::ErrorBody),
        (status = 429, description = "too many executions for this call in the last 60 s (Retry-After)", body = shared::error::ErrorBody),
        (status = 502, description = "the tool failed after its attempts", body = ExecutionResult),
        (status = 503, description = "no automation-worker; recorded as failed", body = ExecutionResult),
        (status = 504, description = "the worker missed the deadline; the execution still ends recorded", body = ExecutionResult),
    ))]
pub async fn execute_tool_by_id(
    State(state): State<AppState>,
    RuntimePrincipal(claims): RuntimePrincipal,
    headers: HeaderMap,
    Path(tool_id): Path<Uuid>,
    Json(body): Json<ExecuteTool>,
) -> AppResult<Response> {
    execute(&state, &claims, &headers, ToolKey::Id(tool_id), body).await
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
        (status = 413, body = shared::error::ErrorBody),
        (status = 422, body = shared::error::ErrorBody),
        (status = 429, body = shared::error::ErrorBody),
        (status = 502, body = ExecutionResult),
        (status = 503, body = ExecutionResult),
        (status = 504, body = ExecutionResult),
    ))]
pub async fn execute_tool_by_name(
    State(state): State<AppState>,
    RuntimePrincipal(claims): RuntimePrincipal,
    headers: HeaderMap,
    Path(tool_name): Path<String>,
    Json(body): Json<ExecuteTool>,
) -> AppResult<Response> {
    execute(&state, &claims, &headers, ToolKey::Name(tool_name), body).await
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

/// What `execute_tool_checked` (migration 0014) answered, as it comes.
#[derive(Debug, sqlx::FromRow)]
struct CheckedRow {
    outcome: String,
    retry_after: Option<f64>,
    tool_name: Option<String>,
    /// For a queued execution: what the worker needs to run it.
    context: Option<sqlx::types::Json<ExecutionContext>>,
}

/// A stale cached tool is read again; past this many tries in one request
/// (a tool edited over and over meanwhile) the request is refused.
const MAX_STALE_RETRIES: usize = 3;

/// The verdict of the checks, typed.
enum Checked {
    /// Boxed: the context is far larger than any refusal.
    Queued(Box<Queued>),
    Refused(Refusal),
}

/// Why the checks refused a request; nothing was recorded.
enum Refusal {
    CallNotFound,
    ToolNotFound,
    ToolNotAllowed {
        tool_name: String,
    },
    /// The tool's stored `input_schema` does not compile.
    SchemaInvalid {
        error: String,
    },
    InvalidInput {
        tool_name: String,
        violations: Vec<Violation>,
    },
    IntegrationDisabled {
        tool_name: String,
    },
    EndpointMissing {
        tool_name: String,
    },
    RateLimited {
        retry_after: Option<f64>,
    },
    /// The tool was edited under every retry.
    ToolChanged,
}

/// A queued execution: the record the failure paths close, and the context
/// the worker runs it from.
struct Queued {
    execution: OpenExecution,
    context: ExecutionContext,
}

async fn execute(
    state: &AppState,
    claims: &Claims,
    http_headers: &HeaderMap,
    key: ToolKey,
    mut body: ExecuteTool,
) -> AppResult<Response> {
    // The caller's trace continued (or a new one); it travels to the
    // worker in the NATS headers so both services' logs join up.
    let trace = TraceContext::from_http(http_headers);
    let trace_id = trace_id(body.trace_id.take(), &trace)?;
    let execution_id = Uuid::now_v7();
    check_input_size(state, &body.input_json)?;
    // The row keeps the input under the tenant's storage mode; n8n gets it
    // as sent.
    let mode: DataStorage = sqlx::query_scalar("SELECT data_storage FROM tenants WHERE id = $1")
        .bind(claims.tenant_id)
        .fetch_optional(&state.pool)
        .await?
        .unwrap_or_default();
    let stored_input = mode.payload(&body.input_json);
    let checked = check_and_enqueue(
        state,
        claims.tenant_id,
        &key,
        &body,
        &stored_input,
        execution_id,
        &trace_id,
    )
    .await?;
    let Queued {
        execution,
        mut context,
    } = match checked {
        Checked::Queued(queued) => *queued,
        Checked::Refused(refused) => return refusal(state, refused),
    };
    context.input = body.input_json;
    context.data_storage = mode;
    let sent = request(state, &execution, context, &trace_id, &trace).await?;
    answer(state, &execution, trace_id, &trace, sent).await
}

/// Makes every check and records the queued execution with its
/// `tool.requested` event, in one round trip on the hot path: the tool
/// (schema, compiled validator) comes from memory, the input is validated
/// here, and one SQL call does the rest. A cached tool found stale is read
/// again and the call repeated.
async fn check_and_enqueue(
    state: &AppState,
    tenant_id: Uuid,
    key: &ToolKey,
    body: &ExecuteTool,
    stored_input: &Value,
    execution_id: Uuid,
    trace_id: &str,
) -> AppResult<Checked> {
    let settings = &state.settings.automation;
    let mut tries = 0;
    let (tool, row, violations) = loop {
        tries += 1;
        let cached = if tries == 1 {
            schema_cache::cached_tool(tenant_id, key)
        } else {
            None
        };
        let tool = match cached {
            Some(tool) => Some(tool),
            None => load_tool(&state.pool, tenant_id, key).await?,
        };
        let violations = match tool.as_deref().map(|t| &t.validator) {
            Some(Ok(validator)) => schema_cache::violations(validator, &body.input_json),
            _ => Vec::new(),
        };
        let input_valid =
            matches!(tool.as_deref().map(|t| &t.validator), Some(Ok(_))) && violations.is_empty();
        let row: CheckedRow = sqlx::query_as(
            "SELECT outcome, retry_after, tool_name, context
             FROM execute_tool_checked($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(execution_id)
        .bind(tenant_id)
        .bind(body.call_id)
        .bind(tool.as_ref().map(|t| t.id))
        .bind(match key {
            ToolKey::Name(name) => Some(name.as_str()),
            ToolKey::Id(_) => None,
        })
        .bind(tool.as_ref().map(|t| &t.input_schema))
        .bind(input_valid)
        .bind(settings.require_agent_tool_mapping)
        .bind(trace_id)
        .bind(stored_input)
        .bind(settings.execute_timeout.as_secs_f64() * 1000.0)
        .bind(i64::from(settings.max_executions_per_minute))
        .bind(Uuid::now_v7())
        .fetch_one(&state.pool)
        .await?;
        if row.outcome == "stale" || row.outcome == "tool_not_found" {
            schema_cache::forget_tool(tenant_id, key);
        }
        if row.outcome != "stale" {
            break (tool, row, violations);
        }
        if tries >= MAX_STALE_RETRIES {
            return Ok(Checked::Refused(Refusal::ToolChanged));
        }
    };
    let tool_name = row
        .tool_name
        .clone()
        .or_else(|| tool.as_ref().map(|t| t.name.clone()))
        .unwrap_or_default();
    let refused = match row.outcome.as_str() {
        "queued" => {
            let (Some(tool), Some(context)) = (tool, row.context) else {
                return Err(anyhow::anyhow!("queued without a tool or a context").into());
            };
            return Ok(Checked::Queued(Box::new(Queued {
                execution: OpenExecution {
                    id: execution_id,
                    tenant_id,
                    tool_id: tool.id,
                    tool_name,
                    attempts: 0,
                },
                context: context.0,
            })));
        }
        "call_not_found" => Refusal::CallNotFound,
        "tool_not_found" => Refusal::ToolNotFound,
        "tool_not_allowed" => Refusal::ToolNotAllowed { tool_name },
        "invalid_input" => match tool.as_deref().map(|t| &t.validator) {
            Some(Err(e)) => Refusal::SchemaInvalid { error: e.clone() },
            _ => Refusal::InvalidInput {
                tool_name,
                violations,
            },
        },
        "integration_disabled" => Refusal::IntegrationDisabled { tool_name },
        "tool_endpoint_missing" => Refusal::EndpointMissing { tool_name },
        "rate_limited" => Refusal::RateLimited {
            retry_after: row.retry_after,
        },
        other => {
            return Err(anyhow::anyhow!("execute_tool_checked answered {other:?}").into());
        }
    };
    Ok(Checked::Refused(refused))
}

/// The HTTP answer to a request the checks refused (nothing was recorded).
fn refusal(state: &AppState, refused: Refusal) -> AppResult<Response> {
    let status = |status, code, message| AppError::Status {
        status,
        code,
        message,
    };
    Err(match refused {
        // Another tenant's call exactly like a missing one.
        Refusal::CallNotFound => AppError::NotFound("call"),
        Refusal::ToolNotFound => AppError::NotFound("tool"),
        Refusal::ToolNotAllowed { tool_name } => status(
            StatusCode::FORBIDDEN,
            "tool_not_allowed",
            format!(
                "tool {tool_name} is not on the allowlist of the call's agent version \
                 (AUTOMATION_REQUIRE_AGENT_TOOL_MAPPING=true)"
            ),
        ),
        Refusal::SchemaInvalid { error } => status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tool_schema_invalid",
            format!("the tool's input_schema does not compile: {error}"),
        ),
        Refusal::InvalidInput {
            tool_name,
            violations,
        } => {
            let body = InvalidInputBody {
                error: InvalidInputDetail {
                    code: "invalid_input".into(),
                    message: format!(
                        "input_json does not match the schema of tool {tool_name} ({} violation{})",
                        violations.len(),
                        if violations.len() == 1 { "" } else { "s" }
                    ),
                    violations,
                },
            };
            return Ok((StatusCode::BAD_REQUEST, axum::Json(body)).into_response());
        }
        Refusal::IntegrationDisabled { tool_name } => status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "integration_disabled",
            format!("the n8n integration of tool {tool_name} is disabled"),
        ),
        Refusal::EndpointMissing { tool_name } => status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tool_endpoint_missing",
            format!("tool {tool_name} has no endpoint to call"),
        ),
        Refusal::RateLimited { retry_after } => AppError::TooManyRequests {
            message: format!(
                "at most {} tool executions per call per minute (AUTOMATION_MAX_EXECUTIONS_PER_MINUTE)",
                state.settings.automation.max_executions_per_minute
            ),
            retry_after_secs: retry_after.unwrap_or(1.0).ceil().max(1.0) as u64,
        },
        Refusal::ToolChanged => status(
            StatusCode::CONFLICT,
            "tool_changed",
            "the tool changed while the request was checked; try again".into(),
        ),
    })
}

/// What became of the request to the workers.
enum Sent {
    Replied(ToolExecuteReply),
    /// With its context the request is larger than one NATS message; it
    /// was not sent.
    TooLarge {
        size: usize,
        max_payload: usize,
    },
    /// No worker is subscribed.
    NoWorker,
    /// No reply within the deadline (or NATS failed meanwhile).
    NoReply(async_nats::RequestError),
}

/// Sends the queued execution to the workers' queue group, once, and waits
/// for the reply until its deadline plus [`REPLY_GRACE`].
///
/// The queued row was committed without waiting for the WAL flush: every
/// answer follows a commit that waits (the worker's outcome, or a failure
/// recorded by [`answer`]), and a WAL flush is a prefix flush, so the row
/// is on disk before any answer names it. The 504 comes seconds later, long
/// after Postgres' WAL writer flushed it (within 3 x wal_writer_delay). A
/// crash before any of that loses a queued row nobody was told about. The
/// context the check read goes along, so the worker starts the n8n call
/// without reading Postgres first.
async fn request(
    state: &AppState,
    execution: &OpenExecution,
    context: ExecutionContext,
    trace_id: &str,
    trace: &TraceContext,
) -> AppResult<Sent> {
    let request = ToolExecuteRequest {
        execution_id: execution.id,
        tenant_id: execution.tenant_id,
        context: Some(context),
    };
    let payload = serde_json::to_vec(&request).map_err(anyhow::Error::from)?;
    // The check before recording leaves room for the context; a context
    // larger still (headers near their caps) ends here, never sent to time
    // out.
    let max_payload = state.nats.server_info().max_payload;
    if max_payload > 0 && payload.len() + NATS_HEADERS_ROOM > max_payload {
        return Ok(Sent::TooLarge {
            size: payload.len(),
            max_payload,
        });
    }
    let mut headers = nats_headers(&execution.id.to_string(), Some(trace_id), trace);
    headers.insert(
        REQUEST_SIGNATURE_HEADER,
        state
            .request_signer
            .sign(RequestKind::ToolExecute, &payload)
            .as_str(),
    );
    let sent = state
        .nats
        .send_request(
            state.subjects.automation_tool_execute(),
            async_nats::Request::new()
                .headers(headers)
                .payload(payload.into())
                .timeout(Some(
                    state.settings.automation.execute_timeout + REPLY_GRACE,
                )),
        )
        .await;
    Ok(match sent {
        Ok(msg) => {
            Sent::Replied(serde_json::from_slice(&msg.payload).map_err(anyhow::Error::from)?)
        }
        Err(err) if err.kind() == async_nats::client::RequestErrorKind::NoResponders => {
            Sent::NoWorker
        }
        Err(err) => Sent::NoReply(err),
    })
}

/// The HTTP answer to a queued execution: the worker's reply (200 or 502),
/// or, when it was never sent, the execution failed at once (413, 503) so
/// it never waits for the reaper, or 504 with what is recorded so far.
async fn answer(
    state: &AppState,
    execution: &OpenExecution,
    trace_id: String,
    trace: &TraceContext,
    sent: Sent,
) -> AppResult<Response> {
    let execution_id = execution.id;
    match sent {
        Sent::Replied(reply) => {
            let status = if reply.status == ExecutionStatus::Succeeded {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            let result = ExecutionResult {
                execution_id,
                trace_id,
                ..reply
            };
            Ok((status, Json(result)).into_response())
        }
        Sent::TooLarge { size, max_payload } => {
            let error = ToolError {
                code: error_codes::REQUEST_TOO_LARGE.into(),
                message: format!(
                    "the request with its context is {size} bytes; NATS carries at most {max_payload}"
                ),
            };
            tool_executions::fail_open(&state.pool, execution, &error, None).await?;
            Err(size_caps::too_large(format!(
                "{} (execution {execution_id} recorded as failed)",
                error.message
            )))
        }
        Sent::NoWorker => {
            let error = ToolError {
                code: error_codes::WORKER_UNAVAILABLE.into(),
                message: "no automation-worker is running; try again shortly".into(),
            };
            tool_executions::fail_open(&state.pool, execution, &error, None).await?;
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
        Sent::NoReply(err) => {
            // The worker may still be running it and will record its
            // outcome, or the reaper will close it.
            tracing::warn!(%execution_id, %trace_id, w3c_trace_id = %trace.trace_id_hex(), error = %err, "tool execution: no reply in time");
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM tool_executions WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2",
            )
            .bind(execution_id)
            .bind(execution.tenant_id)
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

/// Reads the tool named by `key` in the tenant and caches it.
async fn load_tool(
    pool: &PgPool,
    tenant_id: Uuid,
    key: &ToolKey,
) -> AppResult<Option<Arc<CachedTool>>> {
    let row: Option<(Uuid, String, Value)> = match key {
        ToolKey::Id(id) => {
            sqlx::query_as(
                "SELECT id, name, input_schema FROM tools WHERE tenant_id = $1 AND id = $2",
            )
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(pool)
            .await?
        }
        ToolKey::Name(name) => {
            sqlx::query_as(
                "SELECT id, name, input_schema FROM tools WHERE tenant_id = $1 AND name = $2",
            )
            .bind(tenant_id)
            .bind(name)
            .fetch_optional(pool)
            .await?
        }
    };
    Ok(row.map(|(id, name, schema)| schema_cache::remember_tool(tenant_id, key, id, name, schema)))
}

/// Room for the NATS headers (trace context, signature) beside the payload.
const NATS_HEADERS_ROOM: usize = 1024;

/// What the context adds to the input in the request to the worker, for the
/// check made before anything is recorded: the endpoint, integration and
/// call fields of a typical tool. Larger contexts are caught before sending.
const CONTEXT_ROOM: usize = 16 * 1024;

/// 413 before anything is recorded: an input over `MAX_TOOL_INPUT_BYTES`,
/// or one that with its context would not fit in one NATS message (which
/// would otherwise fail to send and look like a worker timeout).
fn check_input_size(state: &AppState, input: &Value) -> AppResult<()> {
    let size = size_caps::check(
        "input_json",
        input,
        state.settings.size_caps.tool_input,
        "MAX_TOOL_INPUT_BYTES",
    )?;
    let max_payload = state.nats.server_info().max_payload;
    if max_payload > 0 && size + CONTEXT_ROOM + NATS_HEADERS_ROOM > max_payload {
        return Err(size_caps::too_large(format!(
            "input_json is {size} bytes of JSON; with its context it would not fit in one \
             NATS message (the server's max_payload is {max_payload})"
        )));
    }
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
