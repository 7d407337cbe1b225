//! `/internal/tenants`: create a tenant (admin; the creator becomes its
//! `internal_admin`), list the caller's memberships, read and update the
//! token's own tenant.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared::auth::{AdminPrincipal, InternalPrincipal, Role};
use shared::redaction::DataStorage;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::client::concurrency::{self, Concurrency};
use crate::http::error::{AppError, AppResult};
use crate::http::extract::{Json, Path, Query};
use crate::http::pagination::{Cursor, Page, PageRequest};
use crate::management::{
    announce_routes_changed, audit, check_concurrency_limit, nullable, text_field,
};
use crate::state::AppState;

/// The columns of [`Tenant`], for every statement that returns one.
macro_rules! tenant_columns {
    () => {
        "id, name, retention_days, max_concurrent_calls, data_storage, offboarding_at, created_at, updated_at"
    };
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant, update_tenant))
        .routes(routes!(get_concurrency))
        .routes(routes!(get_retention))
}

#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    /// Days calls are kept; `null` keeps them until deleted.
    pub retention_days: Option<i32>,
    /// Most calls in progress at once; `null`: no limit.
    pub max_concurrent_calls: Option<i32>,
    /// What of its calls is kept; applies to what is written after a
    /// change.
    pub data_storage: DataStorage,
    /// When its off-boarding started (`DELETE /internal/tenants/{id}`).
    pub offboarding_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A tenant the caller is a member of, with the caller's role in it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct TenantMembership {
    pub id: Uuid,
    pub name: String,
    pub retention_days: Option<i32>,
    pub max_concurrent_calls: Option<i32>,
    pub data_storage: DataStorage,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// 1 to 3650; absent keeps calls until deleted.
    #[schema(minimum = 1, maximum = 3650)]
    pub retention_days: Option<i32>,
    /// Most calls in progress at once (0 to 100000); absent: no limit.
    #[schema(minimum = 0, maximum = 100000)]
    pub max_concurrent_calls: Option<i32>,
    /// Default `everything`.
    pub data_storage: Option<DataStorage>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    /// 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// A number of days (1 to 3650), or `null` to keep calls until deleted.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i32>, nullable, minimum = 1, maximum = 3650)]
    pub retention_days: Option<Option<i32>>,
    /// Most calls in progress at once (0 to 100000), or `null` for no
    /// limit. Lowering it cuts no call in progress: new calls are refused
    /// (`<Reject reason="busy"/>`) until the tenant is under it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i32>, nullable, minimum = 0, maximum = 100000)]
    pub max_concurrent_calls: Option<Option<i32>>,
    /// What of its calls is kept from now on: `everything`,
    /// `everything_except_pii` (personal data replaced by typed
    /// placeholders, numbers masked but the last 4 digits) or
    /// `basic_attributes_only` (no transcript, payloads, tool inputs or
    /// outputs). What is already stored stays as it was written.
    pub data_storage: Option<DataStorage>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    pub tenant_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 200, default 50.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn check_retention(days: Option<i32>) -> AppResult<()> {
    match days {
        Some(d) if !(1..=3650).contains(&d) => Err(AppError::bad_request(
            "retention_days must be between 1 and 3650",
        )),
        _ => Ok(()),
    }
}

/// Creates a tenant and makes the calling user its `internal_admin`. The
/// caller's token stays scoped to its own tenant: log in again with the new
/// `tenant_id` to manage it.
#[utoipa::path(post, path = "/internal/tenants", tag = "tenants",
    security(("bearer" = [])),
    request_body = CreateTenant,
    responses(
        (status = 201, body = Tenant),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, description = "not internal_admin, or the token's sub is not a user", body = shared::error::ErrorBody),
    ))]
async fn create_tenant(
    State(state): State<AppState>,
    AdminPrincipal(claims): AdminPrincipal,
    Json(body): Json<CreateTenant>,
) -> AppResult<(StatusCode, Json<Tenant>)> {
    let name = text_field("name", &body.name, 1, 200)?;
    check_retention(body.retention_days)?;
    check_concurrency_limit(body.max_concurrent_calls)?;
    let not_a_user = || {
        AppError::Forbidden(
            "creating a tenant needs a user's token (its sub must be an existing user id), \
             so that the user can be made the tenant's admin"
                .into(),
        )
    };
    let user_id: Uuid = claims.sub.parse().map_err(|_| not_a_user())?;

    let mut tx = state.pool.begin().await?;
    let user_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE)")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
    if !user_exists {
        return Err(not_a_user());
    }
    let tenant: Tenant = sqlx::query_as(concat!(
        "INSERT INTO tenants (id, name, retention_days, max_concurrent_calls, data_storage)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING ",
        tenant_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(&name)
    .bind(body.retention_days)
    .bind(body.max_concurrent_calls)
    .bind(body.data_storage.unwrap_or_default())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO memberships (user_id, tenant_id, role) VALUES ($1, $2, 'internal_admin')",
    )
    .bind(user_id)
    .bind(tenant.id)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        &claims,
        tenant.id,
        "tenant.create",
        "tenant",
        tenant.id,
        json!({"name": name, "retention_days": body.retention_days,
               "max_concurrent_calls": body.max_concurrent_calls,
               "data_storage": tenant.data_storage,
               "created_from_tenant_id": claims.tenant_id, "admin_user_id": user_id}),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// The tenants the calling user is a member of, with the role in each
/// (empty for a token whose sub is not a user id).
#[utoipa::path(get, path = "/internal/tenants", tag = "tenants",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, body = Page<TenantMembership>),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
    ))]
async fn list_tenants(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Query(query): Query<PageQuery>,
) -> AppResult<Json<Page<TenantMembership>>> {
    let page = PageRequest::parse(query.limit, query.cursor.as_deref())?;
    let Ok(user_id) = claims.sub.parse::<Uuid>() else {
        return Ok(Json(Page {
            items: Vec::new(),
            next_cursor: None,
        }));
    };
    let rows: Vec<TenantMembership> = sqlx::query_as(
        "SELECT t.id, t.name, t.retention_days, t.max_concurrent_calls, t.data_storage, m.role,
                t.created_at,
                t.updated_at
         FROM memberships m JOIN tenants t ON t.id = m.tenant_id
         WHERE m.user_id = $1
           AND ($2::timestamptz IS NULL OR (t.created_at, t.id) < ($2, $3))
         ORDER BY t.created_at DESC, t.id DESC
         LIMIT $4",
    )
    .bind(user_id)
    .bind(page.cursor_at())
    .bind(page.cursor_id())
    .bind(page.fetch())
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(page.page(rows, |t| Cursor {
        at: t.created_at,
        id: t.id,
    })))
}

async fn fetch_tenant(pool: &sqlx::PgPool, tenant_id: Uuid) -> AppResult<Tenant> {
    sqlx::query_as(concat!(
        "SELECT ",
        tenant_columns!(),
        " FROM tenants WHERE id = $1"
    ))
    .bind(tenant_id)
    .fetch_optional(pool)
    .await?
    .ok_or(AppError::NotFound("tenant"))
}

/// The token's own tenant; any other id is 404, like a missing one.
#[utoipa::path(get, path = "/internal/tenants/{tenant_id}", tag = "tenants",
    security(("bearer" = [])),
    params(TenantPath),
    responses(
        (status = 200, body = Tenant),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn get_tenant(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<TenantPath>,
) -> AppResult<Json<Tenant>> {
    if path.tenant_id != claims.tenant_id {
        return Err(AppError::NotFound("tenant"));
    }
    Ok(Json(fetch_tenant(&state.pool, path.tenant_id).await?))
}

/// Renames the tenant, sets its retention (`null` clears it), its
/// concurrent-call limit and/or its storage mode; each change is audited.
#[utoipa::path(patch, path = "/internal/tenants/{tenant_id}", tag = "tenants",
    security(("bearer" = [])),
    params(TenantPath),
    request_body = UpdateTenant,
    responses(
        (status = 200, body = Tenant),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn update_tenant(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<TenantPath>,
    Json(body): Json<UpdateTenant>,
) -> AppResult<Json<Tenant>> {
    if path.tenant_id != claims.tenant_id {
        return Err(AppError::NotFound("tenant"));
    }
    let name = body
        .name
        .as_deref()
        .map(|n| text_field("name", n, 1, 200))
        .transpose()?;
    if let Some(days) = body.retention_days {
        check_retention(days)?;
    }
    if let Some(limit) = body.max_concurrent_calls {
        check_concurrency_limit(limit)?;
    }
    if name.is_none()
        && body.retention_days.is_none()
        && body.max_concurrent_calls.is_none()
        && body.data_storage.is_none()
    {
        return Err(AppError::bad_request(
            "nothing to update: give name, retention_days, max_concurrent_calls and/or \
             data_storage",
        ));
    }
    let mut tx = state.pool.begin().await?;
    let tenant: Tenant = sqlx::query_as(concat!(
        "UPDATE tenants
         SET name = COALESCE($2, name),
             retention_days = CASE WHEN $3 THEN $4 ELSE retention_days END,
             max_concurrent_calls = CASE WHEN $5 THEN $6 ELSE max_concurrent_calls END,
             data_storage = COALESCE($7, data_storage),
             updated_at = now()
         WHERE id = $1
         RETURNING ",
        tenant_columns!()
    ))
    .bind(path.tenant_id)
    .bind(&name)
    .bind(body.retention_days.is_some())
    .bind(body.retention_days.flatten())
    .bind(body.max_concurrent_calls.is_some())
    .bind(body.max_concurrent_calls.flatten())
    .bind(body.data_storage)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(AppError::NotFound("tenant"))?;
    let mut details = serde_json::Map::new();
    if let Some(name) = &name {
        details.insert("name".into(), json!(name));
    }
    if let Some(days) = body.retention_days {
        details.insert("retention_days".into(), json!(days));
    }
    if let Some(limit) = body.max_concurrent_calls {
        details.insert("max_concurrent_calls".into(), json!(limit));
    }
    if let Some(mode) = body.data_storage {
        details.insert("data_storage".into(), json!(mode));
    }
    audit(
        &mut tx,
        &claims,
        tenant.id,
        "tenant.update",
        "tenant",
        tenant.id,
        details.into(),
    )
    .await?;
    tx.commit().await?;
    if body.data_storage.is_some() {
        // The ingresses cache the mode with each route: the next call
        // is written under the new one.
        announce_routes_changed(&state).await;
    }
    Ok(Json(tenant))
}

/// The tenant's concurrent calls: its limit, live calls now, the peak and
/// the calls refused for capacity in the last 24 hours, and per agent.
#[utoipa::path(get, path = "/internal/tenants/{tenant_id}/concurrency", tag = "tenants",
    security(("bearer" = [])),
    params(TenantPath),
    responses(
        (status = 200, body = Concurrency),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn get_concurrency(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<TenantPath>,
) -> AppResult<Json<Concurrency>> {
    if path.tenant_id != claims.tenant_id {
        return Err(AppError::NotFound("tenant"));
    }
    Ok(Json(concurrency::fetch(&state.pool, path.tenant_id).await?))
}

/// What the next retention purge would delete of the tenant (its calls
/// older than `retention_days`, with everything that hangs off them, less
/// those under a legal hold), and the oldest call it keeps.
#[utoipa::path(get, path = "/internal/tenants/{tenant_id}/retention", tag = "tenants",
    security(("bearer" = [])),
    params(TenantPath),
    responses(
        (status = 200, body = shared::retention::RetentionPreview),
        (status = 400, body = shared::error::ErrorBody),
        (status = 401, body = shared::error::ErrorBody),
        (status = 403, body = shared::error::ErrorBody),
        (status = 404, body = shared::error::ErrorBody),
    ))]
async fn get_retention(
    State(state): State<AppState>,
    InternalPrincipal(claims): InternalPrincipal,
    Path(path): Path<TenantPath>,
) -> AppResult<Json<shared::retention::RetentionPreview>> {
    if path.tenant_id != claims.tenant_id {
        return Err(AppError::NotFound("tenant"));
    }
    let tenant = fetch_tenant(&state.pool, path.tenant_id).await?;
    let preview = shared::retention::preview(&state.pool, tenant.id, tenant.retention_days).await?;
    Ok(Json(preview))
}
