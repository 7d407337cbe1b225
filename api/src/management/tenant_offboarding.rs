//! `DELETE /internal/tenants/{tenant_id}` and its progress: a tenant
//! leaving the platform with everything it has (`shared::offboarding`).

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;
use shared::auth::{AdminPrincipal, InternalPrincipal};
use shared::offboarding::{self, Offboarding};
use shared::retention::Pace;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path};
use crate::management::legal_holds::lock_tenant_holds;
use crate::management::tenants::TenantPath;
use crate::management::{announce_routes_changed, audit};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(offboard_tenant))
        .routes(routes!(get_offboarding))
}

/// Off-boards the token's tenant: refused (409) while any legal hold of
/// the tenant is active; otherwise its numbers stop routing at once, no
/// hold can be placed any more, and everything of the tenant is deleted in
/// batches in the background (calls with all that hangs off them, then
/// agents, numbers, tools, webhook endpoints, memberships). Answers with
/// the progress, which `GET .../offboarding` keeps reporting, after the
/// tenant is gone too. Asking again answers with the progress.
#[utoipa::path(delete, path = "/internal/tenants/{tenant_id}", tag = "tenants",
    security(("bearer" = [])),
    params(TenantPath),
    responses(
        (status = 202, body = Offboarding),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, description = "not internal_admin", body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
        (status = 409, description = "a legal hold of the tenant is active", body = shared::error::ErrorBody),
    ))]
async fn offboard_tenant(
    State(state): State<AppState>,
    AdminPrincipal(claims): AdminPrincipal,
    Path(path): Path<TenantPath>,
) -> AppResult<(StatusCode, Json<Offboarding>)> {
    let tenant_id = path.tenant_id;
    if tenant_id != claims.tenant_id {
        return Err(AppError::NotFound("tenant"));
    }
    let mut tx = state.pool.begin().await?;
    // A hold's placement takes this lock exclusively: no hold can slip in
    // between the check and the off-boarding's start.
    lock_tenant_holds(&mut tx, tenant_id, true).await?;
    let started: Option<bool> = sqlx::query_scalar(
        "SELECT offboarding_at IS NOT NULL FROM tenants WHERE id = $1 FOR UPDATE",
    )
    .bind(tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    match started {
        // Gone already: its off-boarding row says so.
        None => {
            let progress = offboarding::progress(&mut tx, tenant_id).await?;
            return progress
                .map(|p| (StatusCode::ACCEPTED, Json(p)))
                .ok_or(AppError::NotFound("tenant"));
        }
        Some(true) => {}
        Some(false) => {
            let holds: Vec<uuid::Uuid> = sqlx::query_scalar(
                "SELECT id FROM legal_holds WHERE tenant_id = $1 AND released_at IS NULL
                 ORDER BY created_at, id",
            )
            .bind(tenant_id)
            .fetch_all(&mut *tx)
            .await?;
            if !holds.is_empty() {
                let ids: Vec<String> = holds.iter().map(ToString::to_string).collect();
                return Err(AppError::Conflict(format!(
                    "the tenant is under {} active legal hold(s) ({}): release them before \
                     off-boarding it",
                    holds.len(),
                    ids.join(", ")
                )));
            }
            sqlx::query(
                "UPDATE tenants SET offboarding_at = now(), updated_at = now() WHERE id = $1",
            )
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?;
            let numbers = sqlx::query(
                "UPDATE phone_numbers SET status = 'inactive', updated_at = now()
                 WHERE tenant_id = $1 AND status = 'active'",
            )
            .bind(tenant_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(
                "INSERT INTO tenant_offboardings (tenant_id, requested_by) VALUES ($1, $2)",
            )
            .bind(tenant_id)
            .bind(&claims.sub)
            .execute(&mut *tx)
            .await?;
            audit(
                &mut tx,
                &claims,
                tenant_id,
                "tenant.offboard",
                "tenant",
                tenant_id,
                json!({"numbers_deactivated": numbers}),
            )
            .await?;
        }
    }
    let progress = offboarding::progress(&mut tx, tenant_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("off-boarding recorded without its row"))?;
    tx.commit().await?;
    announce_routes_changed(&state).await;
    let pool = state.pool.clone();
    tokio::spawn(async move {
        // At the purge's default pace; stopped midway (the api shut down),
        // the dispatch-worker resumes it at its own.
        match offboarding::run(&pool, tenant_id, Pace::DEFAULT).await {
            Ok(true) => tracing::info!(%tenant_id, "tenant off-boarded"),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(%tenant_id, %err, "off-boarding stopped; the dispatch-worker resumes it");
            }
        }
    });
    Ok((StatusCode::ACCEPTED, Json(progress)))
}

/// The progress of the tenant's off-boarding (404 when none was started).
#[utoipa::path(get, path = "/internal/tenants/{tenant_id}/offboarding", tag = "tenants",
    security(("bearer" = [])),
    params(TenantPath),
    responses(
        (status = 200, body = Offboarding),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn get_offboarding(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<TenantPath>,
) -> AppResult<Json<Offboarding>> {
    if path.tenant_id != claims.tenant_id {
        return Err(AppError::NotFound("offboarding"));
    }
    let mut conn = state.pool.acquire().await?;
    offboarding::progress(&mut conn, path.tenant_id)
        .await?
        .map(Json)
        .ok_or(AppError::NotFound("offboarding"))
}
