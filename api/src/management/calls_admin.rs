//! `DELETE /internal/calls/{call_id}`: deletes a call with its transcript,
//! recordings metadata, events, tool executions and dispatch, in one
//! transaction (the foreign keys cascade), unless a legal hold covers it.
//! `POST /internal/calls/erase`: the same for every call of one caller (a
//! data subject's request), the held ones kept and named.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::auth::InternalPrincipal;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path};
use crate::management::legal_holds::{active_hold_for_call, lock_tenant_holds};
use crate::management::{audit, text_field};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(delete_call))
        .routes(routes!(erase_caller))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CallPath {
    pub call_id: Uuid,
}

/// What went with the call.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedCall {
    pub call_id: Uuid,
    pub call_sid: String,
    pub transcript_segments: i64,
    pub recordings: i64,
    pub call_events: i64,
    pub tool_executions: i64,
}

/// Deletes a call and everything recorded about it. A legal hold on the
/// call or on its tenant answers 409 `legal_hold`, naming the hold.
#[utoipa::path(delete, path = "/internal/calls/{call_id}", tag = "calls",
    security(("bearer" = [])),
    params(CallPath),
    responses(
        (status = 200, body = DeletedCall),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 409, description = "under legal hold (code `legal_hold`)", body = shared::error::ErrorBody),
    ))]
async fn delete_call(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<CallPath>,
) -> AppResult<Json<DeletedCall>> {
    let mut tx = state.pool.begin().await?;
    lock_tenant_holds(&mut tx, claims.tenant_id, false).await?;
    let call_sid: Option<String> = sqlx::query_scalar(
        "SELECT call_sid FROM call_sessions
         WHERE id = $1 AND tenant_id IS NOT DISTINCT FROM $2 FOR UPDATE",
    )
    .bind(path.call_id)
    .bind(claims.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(call_sid) = call_sid else {
        return Err(AppError::NotFound("call"));
    };
    if let Some(hold) = active_hold_for_call(&mut tx, claims.tenant_id, path.call_id).await? {
        let scope = if hold.call_id.is_some() {
            "this call"
        } else {
            "every call of the tenant"
        };
        return Err(AppError::Status {
            status: StatusCode::CONFLICT,
            code: "legal_hold",
            message: format!(
                "the call is under legal hold {} (on {scope}, since {}: {}); release the hold first",
                hold.id,
                hold.created_at.to_rfc3339(),
                hold.reason
            ),
        });
    }
    // With its event webhook messages (they hold its numbers); what went is
    // counted as it goes.
    let purged =
        shared::retention::delete_calls(&mut tx, claims.tenant_id, &[path.call_id]).await?;
    let deleted = DeletedCall {
        call_id: path.call_id,
        call_sid,
        transcript_segments: purged.transcript_segments,
        recordings: purged.recordings,
        call_events: purged.events,
        tool_executions: purged.tool_executions,
    };
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "call.delete",
        "call",
        path.call_id,
        json!({"call_sid": deleted.call_sid, "transcript_segments": deleted.transcript_segments,
               "recordings": deleted.recordings, "call_events": deleted.call_events,
               "tool_executions": deleted.tool_executions}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(deleted))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseCaller {
    pub tenant_id: Uuid,
    /// The caller's number as Twilio gave it (`From`), e.g. `+14155550100`.
    pub phone_number: String,
}

/// A call of the caller kept because a legal hold covers it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct HeldCall {
    pub call_id: Uuid,
    pub hold_id: Uuid,
    /// Whether the hold covers every call of the tenant (else this call).
    pub tenant_wide: bool,
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErasedCaller {
    pub erased: shared::retention::Purged,
    /// Not erased, and why.
    pub held: Vec<HeldCall>,
}

/// Erases every call of one caller with everything recorded about them,
/// except those under a legal hold, which the answer names with their
/// hold. The audit entry has the counts, never the number.
#[utoipa::path(post, path = "/internal/calls/erase", tag = "calls",
    security(("bearer" = [])),
    request_body = EraseCaller,
    responses(
        (status = 200, body = ErasedCaller),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
    ))]
async fn erase_caller(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Json(body): Json<EraseCaller>,
) -> AppResult<Json<ErasedCaller>> {
    claims.require_tenant(body.tenant_id)?;
    let number = text_field("phone_number", &body.phone_number, 1, 64)?;
    let mut tx = state.pool.begin().await?;
    lock_tenant_holds(&mut tx, body.tenant_id, false).await?;
    // Each of the caller's calls with the oldest active hold covering it.
    #[derive(sqlx::FromRow)]
    struct CallerCall {
        call_id: Uuid,
        hold_id: Option<Uuid>,
        tenant_wide: Option<bool>,
        reason: Option<String>,
    }
    let calls: Vec<CallerCall> = sqlx::query_as(
        "SELECT c.id AS call_id, h.id AS hold_id, h.call_id IS NULL AS tenant_wide, h.reason
         FROM call_sessions c
         LEFT JOIN LATERAL (
             SELECT id, call_id, reason FROM legal_holds
             WHERE tenant_id = $1 AND released_at IS NULL AND (call_id IS NULL OR call_id = c.id)
             ORDER BY created_at, id LIMIT 1) h ON true
         WHERE c.tenant_id = $1 AND c.from_number = $2
         FOR UPDATE OF c",
    )
    .bind(body.tenant_id)
    .bind(&number)
    .fetch_all(&mut *tx)
    .await?;
    let mut held = Vec::new();
    let mut erasable = Vec::new();
    for call in calls {
        match call.hold_id {
            Some(hold_id) => held.push(HeldCall {
                call_id: call.call_id,
                hold_id,
                tenant_wide: call.tenant_wide.unwrap_or(false),
                reason: call.reason.unwrap_or_default(),
            }),
            None => erasable.push(call.call_id),
        }
    }
    let erased = shared::retention::delete_calls(&mut tx, body.tenant_id, &erasable).await?;
    audit(
        &mut tx,
        &claims,
        body.tenant_id,
        "calls.erase",
        "tenant",
        body.tenant_id,
        json!({"erased": erased, "held_calls": held.iter().map(|h| h.call_id).collect::<Vec<_>>()}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(ErasedCaller { erased, held }))
}
