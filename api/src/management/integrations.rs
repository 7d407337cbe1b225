//! `GET /internal/integrations`: the read side of the tenant's n8n
//! integrations. Never any secret material: only whether a secret is stored.
//! (Integrations are created through the connectivity test of the
//! automation gateway.)

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::auth::InternalPrincipal;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{Cursor, Page};
use crate::management::TenantListQuery;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_integrations))
        .routes(routes!(get_integration))
        // Beside the resource it tests; it runs through the automation-worker.
        .routes(routes!(super::integrations_test::test_n8n_integration))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Integration {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `n8n`.
    pub kind: String,
    pub base_url: String,
    /// `none`, `header`, `basic` or `bearer`.
    pub auth_type: String,
    /// The header carrying the secret when `auth_type` is `header`.
    pub header_name: Option<String>,
    /// Whether an (encrypted) secret is stored; the secret itself is never returned.
    pub has_secret: bool,
    /// `active` or `disabled`.
    pub status: String,
    pub last_tested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct IntegrationPath {
    pub integration_id: Uuid,
}

// The explicit column list is the guarantee: ciphertext, nonce and key id
// are never selected.
const INTEGRATION_SELECT: &str = "SELECT id, tenant_id, kind, base_url, auth_type, header_name,
        secret_ciphertext IS NOT NULL AS has_secret, status, last_tested_at, created_at, updated_at
 FROM integrations";

/// The tenant's integrations, newest first, without secrets.
#[utoipa::path(get, path = "/internal/integrations", tag = "integrations",
    security(("bearer" = [])),
    params(TenantListQuery),
    responses(
        (status = 200, body = Page<Integration>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
    ))]
async fn list_integrations(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Query(query): Query<TenantListQuery>,
) -> AppResult<Json<Page<Integration>>> {
    let page = query
        .fetch_page(
            &claims,
            &state.pool,
            INTEGRATION_SELECT,
            |i: &Integration| Cursor {
                at: i.created_at,
                id: i.id,
            },
        )
        .await?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/internal/integrations/{integration_id}", tag = "integrations",
    security(("bearer" = [])),
    params(IntegrationPath),
    responses(
        (status = 200, body = Integration),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn get_integration(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<IntegrationPath>,
) -> AppResult<Json<Integration>> {
    let sql = format!("{INTEGRATION_SELECT} WHERE id = $1 AND tenant_id = $2");
    let integration = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(path.integration_id)
        .bind(claims.tenant_id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(AppError::NotFound("integration"))?;
    Ok(Json(integration))
}
