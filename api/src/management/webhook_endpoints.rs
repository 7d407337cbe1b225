//! `/internal/webhook-endpoints`, `/internal/webhook-deliveries`: where a
//! tenant's events are pushed (Standard Webhooks 1.0), what was delivered,
//! and sending again. The events themselves are recorded by triggers
//! (`migrations/0019_webhook_endpoints.sql`) and delivered by the
//! automation-worker (`automation-worker/src/webhooks/`); see
//! docs/decisions/0048-tenant-event-webhooks.md.
//!
//! The signing secret is sealed at rest, bound to its tenant and endpoint,
//! and shown only when created or rotated.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::auth::{Claims, InternalPrincipal};
use shared::automation::{REQUEST_SIGNATURE_HEADER, RequestKind};
use shared::crypto::Sealed;
use shared::webhooks::{self, AttemptOutcome, TestDeliveryRequest};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{Cursor, Page, PageRequest};
use crate::management::{TenantListQuery, audit, nullable, text_field};
use crate::state::AppState;

/// How long the secret before a rotation still signs deliveries.
const ROTATION_OVERLAP_HOURS: i64 = 24;
/// How far back a replay may reach.
const MAX_REPLAY_DAYS: i64 = 30;
/// A test delivery is left to the worker the api asked for this long
/// before the relay may take it (the relay's lease).
const TEST_LEASE_SECS: i64 = 60;

/// What the handlers need of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct WebhookSettings {
    /// `AUTOMATION_ALLOW_PRIVATE_NETWORKS`.
    pub allow_private_networks: bool,
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_endpoint, list_endpoints))
        .routes(routes!(get_endpoint, update_endpoint, delete_endpoint))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(replay))
        .routes(routes!(send_test))
        .routes(routes!(resend))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub disabled: bool,
    /// Why the endpoint was disabled (by staff, or after failing for days).
    pub disabled_reason: Option<String>,
    /// Until when deliveries also carry a signature with the secret before
    /// the last rotation.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// The first failed attempt since the last delivered one.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// The explicit list is the guarantee that no sealed secret is selected.
const ENDPOINT_SELECT: &str = "SELECT id, tenant_id, url, description, event_types, disabled,
        disabled_reason, previous_secret_expires_at, failing_since, created_at, updated_at
 FROM webhook_endpoints";

/// An endpoint with its signing secret: only in the answer that made it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_` and base64: the key of a Standard Webhooks verifier. Shown
    /// only here; store it now.
    pub secret: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpoint {
    pub tenant_id: Uuid,
    /// `https://...` (`http://` outside production); checked by the same
    /// SSRF guard as n8n integrations.
    pub url: String,
    /// One or more of the event types (see `WebhookEventType`).
    pub event_types: Vec<String>,
    /// Up to 500 characters.
    pub description: Option<String>,
    pub disabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookEndpoint {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    /// `false` enables the endpoint again (and forgets its failures).
    pub disabled: Option<bool>,
    /// Why it is disabled; `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub disabled_reason: Option<Option<String>>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct EndpointPath {
    pub endpoint_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeliveryPath {
    pub delivery_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new secret; deliveries are signed with it from now on.
    pub secret: String,
    /// Until then deliveries also carry the old secret's signature.
    pub previous_secret_expires_at: DateTime<Utc>,
}

/// Checks a URL as the SSRF guard does before any request (scheme,
/// credentials, literal addresses under the deployment's policy). Names
/// are checked again on their resolved addresses at every attempt.
fn checked_url(state: &AppState, url: &str) -> AppResult<String> {
    let url = url.trim();
    if url.len() > 2048 {
        return Err(AppError::bad_request("url: at most 2048 bytes"));
    }
    let parsed =
        url::Url::parse(url).map_err(|e| AppError::bad_request(format!("url: not a URL ({e})")))?;
    if parsed.fragment().is_some() {
        return Err(AppError::bad_request("url: must not have a fragment"));
    }
    let policy = shared::ssrf::Policy {
        allow_private: state.settings.webhooks.allow_private_networks,
        https_only: state.settings.is_production,
    };
    shared::ssrf::check_url(&policy, &parsed)
        .map_err(|refusal| AppError::bad_request(format!("url: {refusal}")))?;
    Ok(parsed.to_string())
}

/// The event types, each known, each once, sorted.
fn checked_event_types(types: &[String]) -> AppResult<Vec<String>> {
    let mut checked = Vec::with_capacity(types.len());
    for name in types {
        let name = name.trim();
        if !webhooks::is_event_type(name) {
            return Err(AppError::bad_request(format!(
                "event_types: unknown event type {name:?}; known: {}",
                webhooks::EVENT_TYPES.join(", ")
            )));
        }
        checked.push(name.to_owned());
    }
    checked.sort_unstable();
    checked.dedup();
    if checked.is_empty() {
        return Err(AppError::bad_request(
            "event_types: subscribe to at least one event type",
        ));
    }
    Ok(checked)
}

fn seal_secret(
    state: &AppState,
    tenant_id: Uuid,
    endpoint_id: Uuid,
) -> AppResult<(String, Sealed)> {
    let secret = webhooks::generate_secret();
    let sealed = state
        .secrets
        .seal(
            secret.as_bytes(),
            &webhooks::secret_aad(tenant_id, endpoint_id),
        )
        .map_err(anyhow::Error::from)?;
    Ok((secret, sealed))
}

/// Creates an endpoint and answers with its signing secret.
#[utoipa::path(post, path = "/internal/webhook-endpoints", tag = "webhooks",
    security(("bearer" = [])),
    request_body = CreateWebhookEndpoint,
    responses(
        (status = 201, body = EndpointWithSecret),
        (status = 400, description = "bad URL (SSRF guard), unknown event type", body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, description = "no such tenant", body = shared::error::ErrorBody),
    ))]
async fn create_endpoint(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Json(body): Json<CreateWebhookEndpoint>,
) -> AppResult<(StatusCode, Json<EndpointWithSecret>)> {
    claims.require_tenant(body.tenant_id)?;
    let url = checked_url(&state, &body.url)?;
    let event_types = checked_event_types(&body.event_types)?;
    let description = text_field(
        "description",
        body.description.as_deref().unwrap_or(""),
        0,
        500,
    )?;
    let id = Uuid::now_v7();
    let (secret, sealed) = seal_secret(&state, body.tenant_id, id)?;
    let mut tx = state.pool.begin().await?;
    let endpoint: Option<WebhookEndpoint> = sqlx::query_as(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, description, event_types, disabled,
                                        secret_ciphertext, secret_nonce, secret_key_id)
         SELECT $1, t.id, $3, $4, $5, $6, $7, $8, $9 FROM tenants t WHERE t.id = $2
         RETURNING id, tenant_id, url, description, event_types, disabled, disabled_reason,
                   previous_secret_expires_at, failing_since, created_at, updated_at",
    )
    .bind(id)
    .bind(body.tenant_id)
    .bind(&url)
    .bind(&description)
    .bind(&event_types)
    .bind(body.disabled.unwrap_or(false))
    .bind(&sealed.ciphertext)
    .bind(&sealed.nonce)
    .bind(&sealed.key_id)
    .fetch_optional(&mut *tx)
    .await?;
    let endpoint = endpoint.ok_or(AppError::NotFound("tenant"))?;
    audit(
        &mut tx,
        &claims,
        body.tenant_id,
        "webhook_endpoint.create",
        "webhook_endpoint",
        id,
        json!({"url": url, "event_types": event_types}),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(EndpointWithSecret { endpoint, secret }),
    ))
}

/// The tenant's endpoints, newest first, without secrets.
#[utoipa::path(get, path = "/internal/webhook-endpoints", tag = "webhooks",
    security(("bearer" = [])),
    params(TenantListQuery),
    responses(
        (status = 200, body = Page<WebhookEndpoint>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
    ))]
async fn list_endpoints(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Query(query): Query<TenantListQuery>,
) -> AppResult<Json<Page<WebhookEndpoint>>> {
    let page = query
        .fetch_page(
            &claims,
            &state.pool,
            ENDPOINT_SELECT,
            |e: &WebhookEndpoint| Cursor {
                at: e.created_at,
                id: e.id,
            },
        )
        .await?;
    Ok(Json(page))
}

async fn fetch_endpoint(
    conn: &mut PgConnection,
    claims: &Claims,
    endpoint_id: Uuid,
) -> AppResult<WebhookEndpoint> {
    let sql = format!("{ENDPOINT_SELECT} WHERE id = $1 AND tenant_id = $2");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(endpoint_id)
        .bind(claims.tenant_id)
        .fetch_optional(conn)
        .await?
        .ok_or(AppError::NotFound("webhook endpoint"))
}

#[utoipa::path(get, path = "/internal/webhook-endpoints/{endpoint_id}", tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath),
    responses(
        (status = 200, body = WebhookEndpoint),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn get_endpoint(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<EndpointPath>,
) -> AppResult<Json<WebhookEndpoint>> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        fetch_endpoint(&mut conn, &claims, path.endpoint_id).await?,
    ))
}

/// Changes the URL, the event types, the description or whether it is
/// disabled; enabling it again forgets its failures.
#[utoipa::path(patch, path = "/internal/webhook-endpoints/{endpoint_id}", tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath),
    request_body = UpdateWebhookEndpoint,
    responses(
        (status = 200, body = WebhookEndpoint),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn update_endpoint(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<EndpointPath>,
    Json(body): Json<UpdateWebhookEndpoint>,
) -> AppResult<Json<WebhookEndpoint>> {
    let url = body
        .url
        .as_deref()
        .map(|u| checked_url(&state, u))
        .transpose()?;
    let event_types = body
        .event_types
        .as_deref()
        .map(checked_event_types)
        .transpose()?;
    let description = body
        .description
        .as_deref()
        .map(|d| text_field("description", d, 0, 500))
        .transpose()?;
    let reason = match &body.disabled_reason {
        Some(Some(reason)) => Some(Some(text_field("disabled_reason", reason, 1, 500)?)),
        other => other.clone(),
    };
    let mut tx = state.pool.begin().await?;
    let endpoint: Option<WebhookEndpoint> = sqlx::query_as(
        "UPDATE webhook_endpoints SET
             url = COALESCE($3, url),
             event_types = COALESCE($4, event_types),
             description = COALESCE($5, description),
             disabled = COALESCE($6, disabled),
             disabled_reason = CASE WHEN $6 IS FALSE THEN NULL
                                    WHEN $7 THEN $8 ELSE disabled_reason END,
             failing_since = CASE WHEN $6 IS FALSE THEN NULL ELSE failing_since END,
             updated_at = now()
         WHERE id = $1 AND tenant_id = $2
         RETURNING id, tenant_id, url, description, event_types, disabled, disabled_reason,
                   previous_secret_expires_at, failing_since, created_at, updated_at",
    )
    .bind(path.endpoint_id)
    .bind(claims.tenant_id)
    .bind(&url)
    .bind(&event_types)
    .bind(&description)
    .bind(body.disabled)
    .bind(reason.is_some())
    .bind(reason.flatten())
    .fetch_optional(&mut *tx)
    .await?;
    let endpoint = endpoint.ok_or(AppError::NotFound("webhook endpoint"))?;
    audit(
        &mut tx,
        &claims,
        endpoint.tenant_id,
        "webhook_endpoint.update",
        "webhook_endpoint",
        endpoint.id,
        json!({"url": url, "event_types": event_types, "disabled": body.disabled}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(endpoint))
}

/// Deletes the endpoint with its deliveries and their attempts.
#[utoipa::path(delete, path = "/internal/webhook-endpoints/{endpoint_id}", tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn delete_endpoint(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<EndpointPath>,
) -> AppResult<StatusCode> {
    let mut tx = state.pool.begin().await?;
    let url: Option<String> = sqlx::query_scalar(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2 RETURNING url",
    )
    .bind(path.endpoint_id)
    .bind(claims.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let url = url.ok_or(AppError::NotFound("webhook endpoint"))?;
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "webhook_endpoint.delete",
        "webhook_endpoint",
        path.endpoint_id,
        json!({"url": url}),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret; for 24 hours deliveries carry signatures with
/// both, so receivers can switch without losing one.
#[utoipa::path(post, path = "/internal/webhook-endpoints/{endpoint_id}/rotate-secret", tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath),
    responses(
        (status = 200, body = RotatedSecret),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn rotate_secret(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<EndpointPath>,
) -> AppResult<Json<RotatedSecret>> {
    let (secret, sealed) = seal_secret(&state, claims.tenant_id, path.endpoint_id)?;
    let mut tx = state.pool.begin().await?;
    let expires: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE webhook_endpoints SET
             previous_secret_ciphertext = secret_ciphertext,
             previous_secret_nonce = secret_nonce,
             previous_secret_key_id = secret_key_id,
             previous_secret_expires_at = now() + make_interval(hours => $6),
             secret_ciphertext = $3, secret_nonce = $4, secret_key_id = $5,
             updated_at = now()
         WHERE id = $1 AND tenant_id = $2
         RETURNING previous_secret_expires_at",
    )
    .bind(path.endpoint_id)
    .bind(claims.tenant_id)
    .bind(&sealed.ciphertext)
    .bind(&sealed.nonce)
    .bind(&sealed.key_id)
    .bind(i32::try_from(ROTATION_OVERLAP_HOURS).unwrap_or(24))
    .fetch_optional(&mut *tx)
    .await?;
    let previous_secret_expires_at = expires.ok_or(AppError::NotFound("webhook endpoint"))?;
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "webhook_endpoint.rotate_secret",
        "webhook_endpoint",
        path.endpoint_id,
        json!({"previous_secret_expires_at": previous_secret_expires_at}),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(RotatedSecret {
        secret,
        previous_secret_expires_at,
    }))
}

/// One message to one endpoint, with every attempt.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub message_id: Uuid,
    /// The `webhook-id` header of every attempt (`msg_` and the message id).
    #[sqlx(skip)]
    pub webhook_id: String,
    pub event_type: String,
    /// When the event was recorded: the body's `timestamp`.
    pub event_at: DateTime<Utc>,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts_made: i32,
    /// When the next attempt is due, while `pending`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub attempts: Vec<WebhookAttempt>,
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct WebhookAttempt {
    #[serde(skip)]
    pub delivery_id: Uuid,
    pub attempted_at: DateTime<Utc>,
    /// The endpoint's answer; `null` when none came (timeout, connection).
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: i32,
}

const DELIVERY_COLUMNS: &str =
    "d.id, d.endpoint_id, d.message_id, m.event_type, m.created_at AS event_at,
    d.status, d.attempts AS attempts_made,
    CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at, d.created_at";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryListQuery {
    /// `pending`, `succeeded` or `failed`.
    pub status: Option<String>,
    pub event_type: Option<String>,
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Attaches each delivery's attempts, oldest first.
async fn with_attempts(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    mut deliveries: Vec<WebhookDelivery>,
) -> Result<Vec<WebhookDelivery>, sqlx::Error> {
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let attempts: Vec<WebhookAttempt> = sqlx::query_as(
        "SELECT delivery_id, attempted_at, http_status, error, latency_ms FROM webhook_attempts
         WHERE delivery_id = ANY($1) AND tenant_id = $2 ORDER BY attempted_at, id",
    )
    .bind(&ids)
    .bind(tenant_id)
    .fetch_all(conn)
    .await?;
    let mut by_delivery: std::collections::HashMap<Uuid, Vec<WebhookAttempt>> =
        std::collections::HashMap::new();
    for attempt in attempts {
        by_delivery
            .entry(attempt.delivery_id)
            .or_default()
            .push(attempt);
    }
    for delivery in &mut deliveries {
        delivery.webhook_id = webhooks::message_id(delivery.message_id);
        delivery.attempts = by_delivery.remove(&delivery.id).unwrap_or_default();
    }
    Ok(deliveries)
}

/// The endpoint's deliveries, newest first, each with its attempts.
#[utoipa::path(get, path = "/internal/webhook-endpoints/{endpoint_id}/deliveries", tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath, DeliveryListQuery),
    responses(
        (status = 200, body = Page<WebhookDelivery>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn list_deliveries(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<EndpointPath>,
    Query(query): Query<DeliveryListQuery>,
) -> AppResult<Json<Page<WebhookDelivery>>> {
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    if let Some(status) = query.status.as_deref()
        && !matches!(status, "pending" | "succeeded" | "failed")
    {
        return Err(AppError::bad_request(
            "status: one of pending, succeeded, failed",
        ));
    }
    if let Some(event_type) = query.event_type.as_deref()
        && !webhooks::is_event_type(event_type)
    {
        return Err(AppError::bad_request(format!(
            "event_type: unknown event type {event_type:?}"
        )));
    }
    let mut conn = state.pool.acquire().await?;
    fetch_endpoint(&mut conn, &claims, path.endpoint_id).await?;
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS}
         FROM webhook_deliveries d
         JOIN webhook_messages m ON m.id = d.message_id AND m.tenant_id = d.tenant_id
         WHERE d.endpoint_id = $1 AND d.tenant_id = $2
           AND ($3::text IS NULL OR d.status = $3)
           AND ($4::text IS NULL OR m.event_type = $4)
           AND ($5::timestamptz IS NULL OR (d.created_at, d.id) < ($5, $6))
         ORDER BY d.created_at DESC, d.id DESC
         LIMIT $7"
    );
    let rows: Vec<WebhookDelivery> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(path.endpoint_id)
        .bind(claims.tenant_id)
        .bind(&query.status)
        .bind(&query.event_type)
        .bind(page.cursor_at())
        .bind(page.cursor_id())
        .bind(page.fetch())
        .fetch_all(&mut *conn)
        .await?;
    let rows = with_attempts(&mut conn, claims.tenant_id, rows).await?;
    Ok(Json(page.page(rows, |d| Cursor {
        at: d.created_at,
        id: d.id,
    })))
}

/// Sends a message again to its endpoint: a new delivery (a new chain of
/// attempts) with the same `webhook-id`.
#[utoipa::path(post, path = "/internal/webhook-deliveries/{delivery_id}/resend", tag = "webhooks",
    security(("bearer" = [])),
    params(DeliveryPath),
    responses(
        (status = 202, description = "a new delivery, due now", body = WebhookDelivery),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 409, description = "the endpoint is disabled", body = shared::error::ErrorBody),
    ))]
async fn resend(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<DeliveryPath>,
) -> AppResult<(StatusCode, Json<WebhookDelivery>)> {
    let mut tx = state.pool.begin().await?;
    let found: Option<(Uuid, Uuid, bool)> = sqlx::query_as(
        "SELECT d.message_id, d.endpoint_id, e.disabled
         FROM webhook_deliveries d
         JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.tenant_id = d.tenant_id
         WHERE d.id = $1 AND d.tenant_id = $2",
    )
    .bind(path.delivery_id)
    .bind(claims.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (message_id, endpoint_id, disabled) =
        found.ok_or(AppError::NotFound("webhook delivery"))?;
    if disabled {
        return Err(AppError::Conflict(
            "the endpoint is disabled; enable it before sending to it".into(),
        ));
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, tenant_id, message_id, endpoint_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(claims.tenant_id)
    .bind(message_id)
    .bind(endpoint_id)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "webhook_delivery.resend",
        "webhook_delivery",
        id,
        json!({"resent": path.delivery_id, "endpoint_id": endpoint_id}),
    )
    .await?;
    let delivery = delivery_view(&mut tx, claims.tenant_id, id).await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}

async fn delivery_view(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    delivery_id: Uuid,
) -> AppResult<WebhookDelivery> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS}
         FROM webhook_deliveries d
         JOIN webhook_messages m ON m.id = d.message_id AND m.tenant_id = d.tenant_id
         WHERE d.id = $1 AND d.tenant_id = $2"
    );
    let row: WebhookDelivery = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(delivery_id)
        .bind(tenant_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(AppError::NotFound("webhook delivery"))?;
    let mut rows = with_attempts(conn, tenant_id, vec![row]).await?;
    rows.pop().ok_or(AppError::NotFound("webhook delivery"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Messages recorded since then (at most 30 days ago).
    pub since: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayResult {
    /// Messages sent again (each as a new delivery).
    pub deliveries: i64,
}

/// Sends again every message since `since` that the endpoint never
/// received: whose deliveries to it all failed, none delivered or pending.
#[utoipa::path(post, path = "/internal/webhook-endpoints/{endpoint_id}/replay", tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath),
    request_body = ReplayRequest,
    responses(
        (status = 202, body = ReplayResult),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 409, description = "the endpoint is disabled", body = shared::error::ErrorBody),
    ))]
async fn replay(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<EndpointPath>,
    Json(body): Json<ReplayRequest>,
) -> AppResult<(StatusCode, Json<ReplayResult>)> {
    let now = Utc::now();
    if body.since > now || body.since < now - Duration::days(MAX_REPLAY_DAYS) {
        return Err(AppError::bad_request(format!(
            "since: within the last {MAX_REPLAY_DAYS} days"
        )));
    }
    let mut tx = state.pool.begin().await?;
    let endpoint = fetch_endpoint(&mut tx, &claims, path.endpoint_id).await?;
    if endpoint.disabled {
        return Err(AppError::Conflict(
            "the endpoint is disabled; enable it before replaying".into(),
        ));
    }
    let deliveries: i64 = sqlx::query_scalar(
        "WITH missed AS (
             SELECT DISTINCT d.message_id FROM webhook_deliveries d
             JOIN webhook_messages m ON m.id = d.message_id AND m.tenant_id = d.tenant_id
             WHERE d.endpoint_id = $1 AND d.tenant_id = $2 AND d.status = 'failed' AND m.created_at >= $3
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries o
                               WHERE o.message_id = d.message_id AND o.endpoint_id = d.endpoint_id
                                 AND o.status IN ('pending', 'succeeded'))
         ), sent AS (
             INSERT INTO webhook_deliveries (id, tenant_id, message_id, endpoint_id)
             SELECT gen_random_uuid(), $2, message_id, $1 FROM missed
             RETURNING 1
         )
         SELECT count(*) FROM sent",
    )
    .bind(path.endpoint_id)
    .bind(claims.tenant_id)
    .bind(body.since)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        &claims,
        claims.tenant_id,
        "webhook_endpoint.replay",
        "webhook_endpoint",
        path.endpoint_id,
        json!({"since": body.since, "deliveries": deliveries}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(ReplayResult { deliveries })))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TestResult {
    pub delivery_id: Uuid,
    /// The first attempt; later ones follow the retry schedule.
    pub attempt: AttemptOutcome,
}

/// Sends a `webhook.test` event now, whatever the endpoint subscribes
/// to, and answers with the first attempt's outcome.
#[utoipa::path(post, path = "/internal/webhook-endpoints/{endpoint_id}/test", tag = "webhooks",
    security(("bearer" = [])),
    params(EndpointPath),
    responses(
        (status = 200, description = "the attempt was made; `attempt.delivered` says how it went", body = TestResult),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 409, description = "the endpoint is disabled", body = shared::error::ErrorBody),
        (status = 503, description = "no automation-worker answered; the delivery is made later", body = shared::error::ErrorBody),
    ))]
async fn send_test(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<EndpointPath>,
) -> AppResult<Json<TestResult>> {
    let mut tx = state.pool.begin().await?;
    let endpoint = fetch_endpoint(&mut tx, &claims, path.endpoint_id).await?;
    if endpoint.disabled {
        return Err(AppError::Conflict(
            "the endpoint is disabled; enable it before testing it".into(),
        ));
    }
    let (message_id, delivery_id) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "WITH m AS (
             INSERT INTO webhook_messages (id, tenant_id, event_type, data) VALUES ($1, $3, $5, $6)
         )
         INSERT INTO webhook_deliveries (id, tenant_id, message_id, endpoint_id, next_attempt_at)
         VALUES ($2, $3, $1, $4, now() + make_interval(secs => $7))",
    )
    .bind(message_id)
    .bind(delivery_id)
    .bind(claims.tenant_id)
    .bind(endpoint.id)
    .bind(webhooks::TEST_EVENT)
    .bind(json!({"tenant_id": claims.tenant_id, "endpoint_id": endpoint.id}))
    .bind(TEST_LEASE_SECS as f64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let request = TestDeliveryRequest {
        delivery_id,
        tenant_id: claims.tenant_id,
        endpoint_id: endpoint.id,
    };
    let payload = serde_json::to_vec(&request).map_err(anyhow::Error::from)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        REQUEST_SIGNATURE_HEADER,
        state
            .request_signer
            .sign(RequestKind::WebhookTest, &payload)
            .as_str(),
    );
    let reply = state
        .nats
        .send_request(
            state.subjects.webhooks_test(),
            async_nats::Request::new()
                .headers(headers)
                .payload(payload.into())
                .timeout(Some(state.settings.automation.integration_test_timeout)),
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "webhook test: no answer from automation-worker");
            AppError::ServiceUnavailable(
                "automation-worker is not available; the test event will be delivered later".into(),
            )
        })?;
    let attempt: AttemptOutcome =
        serde_json::from_slice(&reply.payload).map_err(anyhow::Error::from)?;
    Ok(Json(TestResult {
        delivery_id,
        attempt,
    }))
}
