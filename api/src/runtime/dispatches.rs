//! `POST /internal/runtime/dispatches/claim`: a voice runtime takes a call.
//!
//! One statement turns a pending, unexpired dispatch of the token's tenant
//! into `claimed` and scrubs its stored join token, returning the sealed
//! token from before the update; the decrypted token goes to that one caller.
//! Concurrent claims serialise on the row lock and re-check `pending`, so
//! exactly one wins.

use crate::audit::{self, AuditEntry};
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::auth::RuntimePrincipal;
use shared::crypto::Sealed;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::Json;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(claim_dispatch))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimDispatch {
    pub dispatch_id: Uuid,
    /// Optional; must be the token's tenant when given.
    pub tenant_id: Option<Uuid>,
}

// No Debug: it holds the join token, which must never reach a log line.
#[derive(Serialize, ToSchema)]
pub struct ClaimedDispatch {
    pub dispatch_id: Uuid,
    pub call_id: Uuid,
    pub tenant_id: Uuid,
    pub agent_id: Option<Uuid>,
    pub agent_version_id: Option<Uuid>,
    /// 32 random bytes, base64url without padding. Returned once, never stored again.
    pub join_token: String,
    pub claimed_by: String,
    pub claimed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    call_id: Uuid,
    agent_id: Option<Uuid>,
    agent_version_id: Option<Uuid>,
    claimed_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ciphertext: Option<Vec<u8>>,
    nonce: Option<Vec<u8>>,
    key_id: Option<String>,
}

const CLAIM: &str = "
UPDATE runtime_dispatches d
SET status = 'claimed', claimed_by = $3, claimed_at = now(), updated_at = now(),
    join_token_ciphertext = NULL, join_token_nonce = NULL
FROM (
    SELECT id, join_token_ciphertext, join_token_nonce, join_token_key_id
    FROM runtime_dispatches
    WHERE id = $1 AND tenant_id = $2
    FOR UPDATE
) old
WHERE d.id = old.id AND d.status = 'pending' AND d.expires_at > now()
RETURNING d.call_id, d.agent_id, d.agent_version_id, d.claimed_at, d.expires_at,
          old.join_token_ciphertext AS ciphertext, old.join_token_nonce AS nonce,
          old.join_token_key_id AS key_id";

/// Claims a pending runtime dispatch and returns its join token, once.
#[utoipa::path(post, path = "/internal/runtime/dispatches/claim", tag = "runtime",
    request_body = ClaimDispatch,
    security(("bearer" = [])),
    responses(
        (status = 200, body = ClaimedDispatch),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, description = "no such dispatch in the token's tenant", body = shared::error::ErrorBody),
        (status = 409, description = "already claimed", body = shared::error::ErrorBody),
        (status = 410, description = "expired", body = shared::error::ErrorBody),
    ))]
async fn claim_dispatch(
    State(state): State<AppState>,
    RuntimePrincipal(claims): RuntimePrincipal,
    Json(body): Json<ClaimDispatch>,
) -> AppResult<Json<ClaimedDispatch>> {
    if let Some(tenant_id) = body.tenant_id {
        claims.require_tenant(tenant_id)?;
    }
    let mut tx = state.pool.begin().await?;
    let row: Option<ClaimedRow> = sqlx::query_as(CLAIM)
        .bind(body.dispatch_id)
        .bind(claims.tenant_id)
        .bind(&claims.sub)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        drop(tx);
        return Err(why_not_claimable(&state, body.dispatch_id, claims.tenant_id).await);
    };
    let (Some(ciphertext), Some(nonce), Some(key_id)) = (row.ciphertext, row.nonce, row.key_id)
    else {
        return Err(AppError::Internal(anyhow::anyhow!(
            "pending dispatch {} has no join token",
            body.dispatch_id
        )));
    };
    // Decrypt before committing: a token that cannot be opened leaves the
    // dispatch pending instead of claimed with nothing to hand out.
    let token = state
        .secrets
        .open(
            &Sealed {
                ciphertext,
                nonce,
                key_id,
            },
            &shared::calls::join_token_aad(body.dispatch_id),
        )
        .map_err(|e| AppError::Internal(anyhow::anyhow!("cannot open join token: {e}")))?;
    audit::record(
        &mut tx,
        AuditEntry {
            actor: &claims.sub,
            tenant_id: Some(claims.tenant_id),
            action: "runtime_dispatch.claim",
            target_type: "runtime_dispatch",
            target_id: Some(body.dispatch_id.to_string()),
            details: json!({"call_id": row.call_id}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Json(ClaimedDispatch {
        dispatch_id: body.dispatch_id,
        call_id: row.call_id,
        tenant_id: claims.tenant_id,
        agent_id: row.agent_id,
        agent_version_id: row.agent_version_id,
        join_token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token),
        claimed_by: claims.sub.clone(),
        claimed_at: row.claimed_at,
        expires_at: row.expires_at,
    }))
}

/// 404 (unknown or another tenant's), 409 (claimed) or 410 (expired).
async fn why_not_claimable(state: &AppState, dispatch_id: Uuid, tenant_id: Uuid) -> AppError {
    let found: Result<Option<(String, bool)>, sqlx::Error> = sqlx::query_as(
        "SELECT status, expires_at <= now() FROM runtime_dispatches WHERE id = $1 AND tenant_id = $2",
    )
    .bind(dispatch_id)
    .bind(tenant_id)
    .fetch_optional(&state.pool)
    .await;
    match found {
        Err(err) => AppError::Database(err),
        Ok(None) => AppError::NotFound("dispatch"),
        Ok(Some((status, _))) if status == "claimed" => AppError::Status {
            status: StatusCode::CONFLICT,
            code: "already_claimed",
            message: "this dispatch was already claimed".into(),
        },
        Ok(Some((status, expired))) if status == "expired" || expired => AppError::Status {
            status: StatusCode::GONE,
            code: "expired",
            message: "this dispatch expired before it was claimed".into(),
        },
        // Pending and unexpired, yet not claimed: a concurrent claim is
        // finishing, or its token could not be opened.
        Ok(Some(_)) => AppError::Status {
            status: StatusCode::CONFLICT,
            code: "not_claimable",
            message: "this dispatch cannot be claimed right now".into(),
        },
    }
}
