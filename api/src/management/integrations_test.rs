//! `POST /internal/integrations/n8n/test`: automation-worker probes the n8n
//! instance; only when it is reachable is the integration stored, its
//! secret sealed (AES-GCM, bound to its tenant and row by
//! `integrations:<tenant_id>:<id>`).
//!
//! The api seals the secret before asking, so it never crosses NATS in
//! clear and only the worker opens it.

use crate::audit::{self, AuditEntry};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::auth::InternalPrincipal;
use shared::automation::{
    AuthType, FailureKind, INTEGRATION_SECRET_AAD_VERSION, IntegrationTestReply,
    IntegrationTestRequest, integration_secret_aad,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::Json;
use crate::state::AppState;

const MAX_SECRET_BYTES: usize = 4096;
const MAX_URL_BYTES: usize = 2048;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestIntegration {
    pub tenant_id: Uuid,
    /// `https://<host>[/prefix]`; `http://` only outside production.
    pub base_url: String,
    pub auth_type: AuthType,
    /// For `header`: the secret; for `basic`: `user:password`; for `bearer`:
    /// the token. Never returned, never logged.
    pub secret: Option<String>,
    /// The header carrying the secret, for `header` only.
    pub header_name: Option<String>,
}

impl std::fmt::Debug for TestIntegration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIntegration")
            .field("tenant_id", &self.tenant_id)
            .field("base_url", &self.base_url)
            .field("auth_type", &self.auth_type)
            .field("header_name", &self.header_name)
            .finish_non_exhaustive()
    }
}

/// A stored integration; the secret is never part of it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct IntegrationView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub kind: String,
    pub base_url: String,
    pub auth_type: String,
    pub header_name: Option<String>,
    pub has_secret: bool,
    pub status: String,
    pub last_tested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// The 422 body: the usual error plus the probe's reason.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnreachableBody {
    pub error: UnreachableDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnreachableDetail {
    /// `integration_unreachable`.
    pub code: String,
    pub message: String,
    /// `dns`, `connect`, `tls`, `timeout`, `http_status`, `address_refused`, `invalid_url`...
    pub reason: FailureKind,
    pub http_status: Option<u16>,
    pub attempts: u32,
}

fn validate(body: &TestIntegration, is_production: bool) -> AppResult<(String, Option<String>)> {
    let base_url = body.base_url.trim().trim_end_matches('/').to_owned();
    if base_url.len() > MAX_URL_BYTES {
        return Err(AppError::bad_request("base_url: at most 2048 bytes"));
    }
    let parsed = url::Url::parse(&base_url)
        .map_err(|e| AppError::bad_request(format!("base_url: not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(AppError::bad_request(
            "base_url: must be an http(s) URL with a host",
        ));
    }
    if is_production && parsed.scheme() != "https" {
        return Err(AppError::bad_request(
            "base_url: must be https:// in production",
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(AppError::bad_request(
            "base_url: must not have a query or fragment",
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(AppError::bad_request(
            "base_url: must not carry credentials; use auth_type and secret",
        ));
    }
    let secret = body.secret.as_deref().filter(|s| !s.is_empty());
    match (body.auth_type, secret) {
        (AuthType::None, Some(_)) => {
            return Err(AppError::bad_request(
                "secret: must be absent when auth_type is none",
            ));
        }
        (AuthType::None, None) => {}
        (_, None) => {
            return Err(AppError::bad_request(format!(
                "secret: required when auth_type is {}",
                body.auth_type.as_str()
            )));
        }
        (_, Some(s)) if s.len() > MAX_SECRET_BYTES => {
            return Err(AppError::bad_request("secret: at most 4096 bytes"));
        }
        (AuthType::Basic, Some(s)) if !s.contains(':') => {
            return Err(AppError::bad_request(
                "secret: basic auth takes user:password",
            ));
        }
        (_, Some(s)) if s.chars().any(char::is_control) => {
            return Err(AppError::bad_request(
                "secret: must not contain control characters",
            ));
        }
        _ => {}
    }
    let header_name = body.header_name.as_deref().map(str::trim);
    let header_name = match (body.auth_type, header_name) {
        (AuthType::Header, Some(name))
            if !name.is_empty()
                && name.len() <= 100
                && axum::http::HeaderName::from_bytes(name.as_bytes()).is_ok() =>
        {
            Some(name.to_ascii_lowercase())
        }
        (AuthType::Header, _) => {
            return Err(AppError::bad_request(
                "header_name: required for auth_type header, a valid HTTP header name",
            ));
        }
        (_, Some(_)) => {
            return Err(AppError::bad_request(
                "header_name: only for auth_type header",
            ));
        }
        (_, None) => None,
    };
    Ok((base_url, header_name))
}

/// Tests an n8n instance through automation-worker and stores it only when
/// it is reachable.
#[utoipa::path(post, path = "/internal/integrations/n8n/test", tag = "automation",
    request_body = TestIntegration,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "reachable; stored", body = IntegrationView),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 422, description = "not reachable; nothing stored", body = UnreachableBody),
        (status = 503, description = "no automation-worker answered", body = shared::error::ErrorBody),
    ))]
pub async fn test_n8n_integration(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    headers: axum::http::HeaderMap,
    Json(body): Json<TestIntegration>,
) -> AppResult<Response> {
    claims.require_tenant(body.tenant_id)?;
    let trace = shared::trace::TraceContext::from_http(&headers);
    let (base_url, header_name) = validate(&body, state.settings.is_production)?;
    let integration_id = Uuid::now_v7();
    let aad = integration_secret_aad(body.tenant_id, integration_id);
    let sealed = body
        .secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| state.secrets.seal(s.as_bytes(), &aad))
        .transpose()
        .map_err(anyhow::Error::from)?;
    let request = IntegrationTestRequest {
        integration_id,
        tenant_id: body.tenant_id,
        base_url: base_url.clone(),
        auth_type: body.auth_type,
        header_name: header_name.clone(),
        secret: sealed.clone().map(Into::into),
    };
    let payload = serde_json::to_vec(&request).map_err(anyhow::Error::from)?;
    let timeout = state.settings.automation.integration_test_timeout;
    let mut headers =
        crate::automation::execute::nats_headers(&integration_id.to_string(), None, &trace);
    headers.insert(
        shared::automation::REQUEST_SIGNATURE_HEADER,
        state
            .request_signer
            .sign(shared::automation::RequestKind::IntegrationTest, &payload)
            .as_str(),
    );
    let reply = state
        .nats
        .send_request(
            state.subjects.automation_integration_test(),
            async_nats::Request::new()
                .headers(headers)
                .payload(payload.into())
                .timeout(Some(timeout)),
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "integration test: no answer from automation-worker");
            AppError::ServiceUnavailable(
                "automation-worker is not available; try again shortly".into(),
            )
        })?;
    let reply: IntegrationTestReply =
        serde_json::from_slice(&reply.payload).map_err(anyhow::Error::from)?;
    if !reply.reachable {
        let failure = reply.failure.unwrap_or(shared::automation::ProbeFailure {
            kind: FailureKind::Other,
            message: "unreachable".into(),
            http_status: None,
        });
        let body = UnreachableBody {
            error: UnreachableDetail {
                code: "integration_unreachable".into(),
                message: format!("n8n at {base_url} is not reachable: {}", failure.message),
                reason: failure.kind,
                http_status: failure.http_status,
                attempts: reply.attempts,
            },
        };
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response());
    }

    let mut tx = state.pool.begin().await?;
    let view: Option<IntegrationView> = sqlx::query_as(
        "INSERT INTO integrations (id, tenant_id, kind, base_url, auth_type, header_name,
                                   secret_ciphertext, secret_nonce, secret_key_id,
                                   secret_aad_version, last_tested_at)
         SELECT $1, t.id, 'n8n', $3, $4, $5, $6, $7, $8, $9, now() FROM tenants t WHERE t.id = $2
         RETURNING id, tenant_id, kind, base_url, auth_type, header_name,
                   secret_ciphertext IS NOT NULL AS has_secret, status, last_tested_at, created_at",
    )
    .bind(integration_id)
    .bind(body.tenant_id)
    .bind(&base_url)
    .bind(body.auth_type.as_str())
    .bind(&header_name)
    .bind(sealed.as_ref().map(|s| s.ciphertext.clone()))
    .bind(sealed.as_ref().map(|s| s.nonce.clone()))
    .bind(sealed.as_ref().map(|s| s.key_id.clone()))
    .bind(INTEGRATION_SECRET_AAD_VERSION)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(view) = view else {
        return Err(AppError::NotFound("tenant"));
    };
    audit::record(
        &mut tx,
        AuditEntry {
            actor: &claims.sub,
            tenant_id: Some(body.tenant_id),
            action: "integration.create",
            target_type: "integration",
            target_id: Some(integration_id.to_string()),
            details: json!({"kind": "n8n", "base_url": base_url, "auth_type": body.auth_type.as_str(), "probe_attempts": reply.attempts, "probe_latency_ms": reply.latency_ms}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}
