//! The lifecycle of a tool execution, owned here: its timeline events (one
//! payload type, one key builder) and the statements that move it on.
//!
//! The api queues an execution and its `tool.requested` event in one SQL
//! call (`execute_tool_checked`, a PL/pgSQL function so the hot path stays
//! one round trip; it builds the same key as [`event_key`], which a test
//! checks). From there:
//!
//! - the worker marks it running once its n8n call is slow ([`mark_running`]);
//! - the worker records its outcome with `tool.succeeded` / `tool.failed`
//!   ([`record_outcome`]);
//! - or it is failed while still open, with `tool.failed` ([`fail_open`]):
//!   by the api when it was never sent, by the worker when it refuses the
//!   request, by the reaper when its worker died.
//!
//! Each close is one statement that only acts on an open execution
//! (`queued` or `running`), so whichever comes first wins and the others
//! change nothing: an execution ends once, with one outcome event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::automation::{ExecutionContext, ExecutionStatus, ToolError};

/// The timeline events of an execution (`call_events.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Requested,
    Succeeded,
    Failed,
}

impl EventKind {
    pub fn event_type(self) -> &'static str {
        match self {
            EventKind::Requested => "tool.requested",
            EventKind::Succeeded => "tool.succeeded",
            EventKind::Failed => "tool.failed",
        }
    }

    fn key_suffix(self) -> &'static str {
        match self {
            EventKind::Requested => "requested",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
        }
    }

    /// The event that closes an execution ending with `status`.
    pub fn closing(status: ExecutionStatus) -> Self {
        match status {
            ExecutionStatus::Succeeded => EventKind::Succeeded,
            _ => EventKind::Failed,
        }
    }
}

/// The idempotency key of an execution's event:
/// `tool:<execution_id>:requested|succeeded|failed`. `call_events` is
/// unique on `(call_id, idempotency_key)`, so an execution has at most one
/// event of each kind.
pub fn event_key(execution_id: Uuid, kind: EventKind) -> String {
    format!("tool:{execution_id}:{}", kind.key_suffix())
}

/// The payload of `tool.succeeded` and `tool.failed`, whoever closed the
/// execution. Every field is always present (`null` when unknown), so
/// readers see one shape. `tool.requested` carries the first three
/// (`execution_id`, `tool_id`, `tool`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolEvent {
    pub execution_id: Uuid,
    pub tool_id: Uuid,
    /// The tool's name.
    pub tool: String,
    pub status: ExecutionStatus,
    pub attempts: u32,
    pub latency_ms: Option<u64>,
    /// n8n's last HTTP status, when it answered.
    pub http_status: Option<u16>,
    pub error: Option<ToolError>,
    /// The automation-worker instance that ran or refused the execution
    /// (`AUTOMATION_WORKER_ID`); none when the api or the reaper closed it,
    /// as no worker is known to have held it.
    pub worker_id: Option<String>,
}

/// What an execution ended with.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: ExecutionStatus,
    pub output: Option<Value>,
    pub error: Option<ToolError>,
    pub http_status: Option<u16>,
    pub attempts: u32,
    pub latency_ms: u64,
}

impl Outcome {
    pub fn failed(code: &str, message: impl Into<String>, attempts: u32, latency_ms: u64) -> Self {
        Self {
            status: ExecutionStatus::Failed,
            output: None,
            error: Some(ToolError {
                code: code.to_owned(),
                message: message.into(),
            }),
            http_status: None,
            attempts,
            latency_ms,
        }
    }
}

/// Marks a queued execution running. Never waits for the WAL flush: the
/// mark is informational, and the outcome's commit flushes it anyway.
const MARK_RUNNING_SQL: &str = "
WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS sc)
UPDATE tool_executions SET status = 'running', started_at = now()
WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 AND status = 'queued' AND EXISTS (SELECT 1 FROM cfg)";

/// Marks the execution running if it is still queued.
pub async fn mark_running<'e>(
    executor: impl PgExecutor<'e>,
    execution_id: Uuid,
    tenant_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(MARK_RUNNING_SQL)
        .bind(execution_id)
        .bind(tenant_id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Records the outcome and its event in one statement (atomic), with
/// `synchronous_commit` chosen per call.
const RECORD_SQL: &str = "
WITH cfg AS (SELECT set_config('synchronous_commit', $12, true) AS sc),
done AS (
    UPDATE tool_executions
    SET status = $2, output = $3, error_code = $4, error_message = $5,
        http_status = $6, attempts = $7, latency_ms = $8, finished_at = now(),
        started_at = COALESCE(started_at, $13)
    WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $14 AND status IN ('queued', 'running')
    RETURNING id, tenant_id, call_id, trace_id),
event AS (
    INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, trace_id)
    SELECT $9, tenant_id, call_id, $10, $11, $15, trace_id FROM done
    ON CONFLICT (call_id, idempotency_key) DO NOTHING)
SELECT (SELECT count(*) FROM done) AS n, (SELECT sc FROM cfg) AS sc";

/// Records what the execution `ctx` ended with, and its `tool.succeeded` /
/// `tool.failed` event. False when it was no longer open (another close,
/// such as the reaper's, came first): nothing is written then.
pub async fn record_outcome<'e>(
    executor: impl PgExecutor<'e>,
    ctx: &ExecutionContext,
    outcome: &Outcome,
    started_at: DateTime<Utc>,
    worker_id: &str,
    synchronous_commit: bool,
) -> Result<bool, sqlx::Error> {
    let kind = EventKind::closing(outcome.status);
    // Stored under the tenant's storage mode: n8n's output and an error
    // that may quote it never reach Postgres unredacted.
    let mode = ctx.data_storage;
    let output = outcome.output.as_ref().map(|o| mode.payload(o));
    let error = outcome.error.as_ref().map(|e| ToolError {
        code: e.code.clone(),
        message: mode.message(&e.message).into_owned(),
    });
    let event = ToolEvent {
        execution_id: ctx.id,
        tool_id: ctx.tool_id,
        tool: ctx.tool_name.clone(),
        status: outcome.status,
        attempts: outcome.attempts,
        latency_ms: Some(outcome.latency_ms),
        http_status: outcome.http_status,
        error: error.clone(),
        worker_id: Some(worker_id.to_owned()),
    };
    let (updated, _): (i64, String) = sqlx::query_as(RECORD_SQL)
        .bind(ctx.id)
        .bind(outcome.status.as_str())
        .bind(output.as_deref())
        .bind(error.as_ref().map(|e| e.code.as_str()))
        .bind(error.as_ref().map(|e| e.message.as_str()))
        .bind(outcome.http_status.map(i32::from))
        .bind(i32::try_from(outcome.attempts).unwrap_or(i32::MAX))
        .bind(i32::try_from(outcome.latency_ms).unwrap_or(i32::MAX))
        .bind(Uuid::now_v7())
        .bind(kind.event_type())
        .bind(event_key(ctx.id, kind))
        .bind(if synchronous_commit { "on" } else { "off" })
        .bind(started_at)
        .bind(ctx.tenant_id)
        .bind(sqlx::types::Json(&event))
        .fetch_one(executor)
        .await?;
    Ok(updated > 0)
}

/// An open execution (`queued` or `running`), with what its `tool.failed`
/// event names.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OpenExecution {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tool_id: Uuid,
    pub tool_name: String,
    pub attempts: i32,
}

/// Reads the execution if it is still open. By primary key, the tenant
/// checked on the row (docs/decisions/0037-plan-stable-keys.md).
pub async fn find_open<'e>(
    executor: impl PgExecutor<'e>,
    execution_id: Uuid,
    tenant_id: Uuid,
) -> Result<Option<OpenExecution>, sqlx::Error> {
    sqlx::query_as(
        "SELECT te.id, te.tenant_id, te.tool_id, t.name AS tool_name, te.attempts
         FROM tool_executions te
         JOIN tools t ON t.id = te.tool_id AND t.tenant_id IS NOT DISTINCT FROM te.tenant_id
         WHERE te.id = $1 AND te.tenant_id IS NOT DISTINCT FROM $2
           AND te.status IN ('queued', 'running')",
    )
    .bind(execution_id)
    .bind(tenant_id)
    .fetch_optional(executor)
    .await
}

/// Locks up to 500 executions still open `grace` past their deadline,
/// oldest deadline first, skipping those another transaction holds (another
/// reaper, or an outcome being recorded). Through the partial index of open
/// executions, so it reads only the backlog; the limit is a literal so the
/// generic plan is costed for it. Run it in a transaction and fail them in
/// the same one.
pub async fn lock_overdue<'e>(
    executor: impl PgExecutor<'e>,
    grace: std::time::Duration,
) -> Result<Vec<OpenExecution>, sqlx::Error> {
    sqlx::query_as(
        "SELECT te.id, te.tenant_id, te.tool_id, t.name AS tool_name, te.attempts
         FROM tool_executions te
         JOIN tools t ON t.id = te.tool_id AND t.tenant_id IS NOT DISTINCT FROM te.tenant_id
         WHERE te.status IN ('queued', 'running')
           AND te.deadline_at < now() - make_interval(secs => $1)
         ORDER BY te.deadline_at
         LIMIT 500
         FOR UPDATE OF te SKIP LOCKED",
    )
    .bind(grace.as_secs_f64())
    .fetch_all(executor)
    .await
}

/// Fails an open execution and adds its `tool.failed` event, in one
/// statement on one row by its key (a batch is a loop of these, not one
/// statement over an array: docs/decisions/0037-plan-stable-keys.md).
/// Commits with the session's `synchronous_commit` (on by default): the
/// answers that name the failure come after it.
const FAIL_OPEN_SQL: &str = "
WITH failed AS (
    UPDATE tool_executions
    SET status = 'failed', error_code = $3, error_message = $4, finished_at = now()
    WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 AND status IN ('queued', 'running')
    RETURNING tenant_id, call_id, trace_id),
event AS (
    INSERT INTO call_events (id, tenant_id, call_id, type, idempotency_key, payload, trace_id)
    SELECT $5, tenant_id, call_id, 'tool.failed', $6, $7, trace_id FROM failed
    ON CONFLICT (call_id, idempotency_key) DO NOTHING)
SELECT count(*) FROM failed";

/// Fails `execution` with `error` if it is still open, with its
/// `tool.failed` event. False when it was already closed: nothing is
/// written then.
pub async fn fail_open<'e>(
    executor: impl PgExecutor<'e>,
    execution: &OpenExecution,
    error: &ToolError,
    worker_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let event = ToolEvent {
        execution_id: execution.id,
        tool_id: execution.tool_id,
        tool: execution.tool_name.clone(),
        status: ExecutionStatus::Failed,
        attempts: u32::try_from(execution.attempts).unwrap_or(0),
        latency_ms: None,
        http_status: None,
        error: Some(error.clone()),
        worker_id: worker_id.map(str::to_owned),
    };
    let failed: i64 = sqlx::query_scalar(FAIL_OPEN_SQL)
        .bind(execution.id)
        .bind(execution.tenant_id)
        .bind(&error.code)
        .bind(&error.message)
        .bind(Uuid::now_v7())
        .bind(event_key(execution.id, EventKind::Failed))
        .bind(sqlx::types::Json(&event))
        .fetch_one(executor)
        .await?;
    Ok(failed > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_keep_their_documented_form() {
        let id = Uuid::from_u128(7);
        assert_eq!(
            event_key(id, EventKind::Requested),
            "tool:00000000-0000-0000-0000-000000000007:requested"
        );
        assert_eq!(
            event_key(id, EventKind::Succeeded),
            "tool:00000000-0000-0000-0000-000000000007:succeeded"
        );
        assert_eq!(
            event_key(id, EventKind::Failed),
            "tool:00000000-0000-0000-0000-000000000007:failed"
        );
        assert_eq!(
            EventKind::closing(ExecutionStatus::Succeeded),
            EventKind::Succeeded
        );
        assert_eq!(
            EventKind::closing(ExecutionStatus::Failed),
            EventKind::Failed
        );
    }

    #[test]
    fn the_event_payload_has_one_shape() {
        let event = ToolEvent {
            execution_id: Uuid::from_u128(1),
            tool_id: Uuid::from_u128(2),
            tool: "lookup_order".into(),
            status: ExecutionStatus::Failed,
            attempts: 0,
            latency_ms: None,
            http_status: None,
            error: Some(ToolError {
                code: "worker_lost".into(),
                message: "m".into(),
            }),
            worker_id: None,
        };
        let json = serde_json::to_value(&event).expect("json");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attempts",
                "error",
                "execution_id",
                "http_status",
                "latency_ms",
                "status",
                "tool",
                "tool_id",
                "worker_id"
            ]
        );
        assert_eq!(json["status"], "failed");
        assert_eq!(json["error"]["code"], "worker_lost");
        assert_eq!(
            serde_json::from_value::<ToolEvent>(json).expect("back"),
            event
        );
    }
}
